"""web chat replies: the pending-reply queue of the web chat, shared by every worker

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 19:18:41.173309
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "web_chat_replies",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("sender", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("web_chat_replies", schema=None) as batch_op:
        batch_op.create_index("ix_web_chat_replies_sender_id", ["sender", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("web_chat_replies", schema=None) as batch_op:
        batch_op.drop_index("ix_web_chat_replies_sender_id")
    op.drop_table("web_chat_replies")
