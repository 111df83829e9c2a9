"""The one exception class for problems the user can fix (a bad option, row or image, an occupied output
folder, a full disk): the CLI prints its message as one ``adpo: error: …`` line and exits 2. Anything else
is a bug in adpo and keeps its traceback, so the two are never confused."""

from __future__ import annotations


class UserError(ValueError):
    """A problem with the user's input or environment; the message names the file, row and field, or the
    folder, and says what to do."""


class MissingInput(UserError, FileNotFoundError):
    """An input file or folder the command was pointed at does not exist or is not what it should be."""


class NotWritable(UserError, PermissionError):
    """An output folder (or the place beside it for its lock) cannot be created or written."""
