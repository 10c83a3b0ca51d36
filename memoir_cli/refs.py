"""How a pack is named, in one grammar, wherever a command reads one:

    PATH                 a local pack folder, at its current version
    PATH@N, PATH@vN      version N of it
    USER/NAME            a pack on the Hugging Face Hub, at its newest version
    USER/NAME@vN, @N     its version N (the tag a push gives it)
    USER/NAME@REV        any other revision: a commit, a branch

An existing local folder always wins, also one whose own name contains '@N' or a slash. Parsing
reads nothing but the file system's names; opening is history.open_pack's job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_VERSION = re.compile(r"^(?P<path>.+)@v?(?P<version>\d+)$")


@dataclass(frozen=True)
class PackRef:
    """A local pack folder, and a version of it (None: the current one)."""

    path: Path
    version: int | None = None

    def __str__(self) -> str:
        return f"{self.path}@{self.version}" if self.version is not None else str(self.path)


@dataclass(frozen=True)
class HubRef:
    """A pack on the Hub: a model repo, and a revision (None: the main branch's newest version)."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id


def local_ref(text: str | Path | PackRef) -> PackRef:
    """`my-pack`, `my-pack@3` or `my-pack@v3`, read as a local folder."""
    if isinstance(text, PackRef):
        return text
    text = str(text)
    match = _VERSION.match(text)
    if match and not Path(text).exists():
        return PackRef(Path(match["path"]), int(match["version"]))
    return PackRef(Path(text))


def parse_ref(text: str | Path | PackRef | HubRef) -> PackRef | HubRef:
    """A local reference, or a Hub one when `text` is a valid repo id that is not a local folder."""
    if isinstance(text, (PackRef, HubRef)):
        return text
    text = str(text)
    repo_id, _, revision = text.partition("@")
    if Path(text).exists() or Path(repo_id).exists() or not is_repo_id(repo_id):
        return local_ref(text)
    return HubRef(repo_id, f"v{revision}" if revision.isdigit() else (revision or None))


def is_repo_id(text: str) -> bool:
    """`user/name` as the Hub validates it (one slash: a deeper path is a local folder)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if text.count("/") != 1 or text.startswith((".", "/")):
        return False
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True
