"""Errors the CLI turns into one clear line and a meaningful exit code (never a traceback)."""

from __future__ import annotations


class MemoirError(Exception):
    """Base class: `message` is shown to the user as is; `exit_code` is what the process returns."""

    exit_code = 1

    def __init__(self, message: str, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []


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
