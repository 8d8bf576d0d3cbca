"""Staff review console: find NLU misclassifications, relabel them, retrain, watch quality.

Mounted by the service under ``/staff``: ``app.add_subapp("/staff", create_app(deps))``.
"""

from staff_console.app import create_app
from staff_console.deps import StaffDeps

__all__ = ["StaffDeps", "create_app"]
