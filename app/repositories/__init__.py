"""One module of async functions per table; each takes the session first."""

from typing import Any

from sqlalchemy import Row

# A result row of any shape; columns are read by name.
Record = Row[*tuple[Any, ...]]
