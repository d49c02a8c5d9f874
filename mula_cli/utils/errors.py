"""Errors a user can cause, reported as one line and exit code 2 by the CLI."""

from __future__ import annotations


class MulaError(Exception):
    """A problem with the user's input (path, file, format or option).

    The message must be one line that names the offending thing and says what to do.
    """

    exit_code = 2
