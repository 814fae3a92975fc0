"""The two kinds of failure a user can see, and their exit codes.

Every failure that reaches the user is one line: what is wrong and where
(file, key, device). The CLI prints ``str(error)`` and exits with ``exit_code``;
it never shows a traceback for these.
"""

from __future__ import annotations


class PifleetError(Exception):
    """Base of all expected failures."""

    exit_code = 1


class UserError(PifleetError):
    """Bad input: a config key, a file, an image or a device the user named. Exit 2."""

    exit_code = 2


class BuildError(PifleetError):
    """Something failed at run time although the input was acceptable. Exit 1."""

    exit_code = 1


class Terminated(BaseException):
    """SIGTERM, raised like Ctrl-C so every temporary output is removed on the way out."""
