"""User-facing errors: one line naming the file, field or value at fault."""

from __future__ import annotations


class UserError(Exception):
    """An error the user can fix; the CLI prints it on one line and exits with code 2."""
