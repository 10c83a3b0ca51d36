"""Errors the CLI turns into one clear line and a meaningful exit code (never a traceback).

The library speaks in its own terms: an error that a setting can fix names that setting's
parameter (`option`) and what changing it does (`remedy`). Each front end says it its own way:
the CLI as the flag that sets that parameter, a Python caller reads the attributes.
"""

from __future__ import annotations


class MemoirError(Exception):
    """Base class: `message` is shown to the user as is; `exit_code` is what the process returns.

    `option` is the parameter that would change the outcome (`"force"`, `"layer"`, `"token"`) and
    `remedy` what setting it does ("to compare them anyway"), when there is one.
    """

    exit_code = 1

    def __init__(
        self, message: str, details: list[str] | None = None, option: str | None = None, remedy: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []
        self.option = option
        self.remedy = remedy


class BadInputError(MemoirError):
    """The user's input (facts file, arguments) is malformed. Nothing was written."""

    exit_code = 2


class PackError(MemoirError):
    """A pack is missing, corrupt, tampered with, or made for another model."""

    exit_code = 3


class ModelError(MemoirError):
    """A model cannot be loaded, or its architecture is not supported."""

    exit_code = 4


class PackBusyError(PackError):
    """Another process is writing the pack and the caller chose not to wait."""

    exit_code = 5


class HubError(MemoirError):
    """The Hugging Face Hub cannot be reached, refuses the request, or does not have the pack."""

    exit_code = 6
