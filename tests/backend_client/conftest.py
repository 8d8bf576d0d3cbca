"""Fixtures: the same reference backend, client and webhook receiver as tests/core_backend uses."""

from tests.core_backend.conftest import backend, client, receiver

__all__ = ["backend", "client", "receiver"]
