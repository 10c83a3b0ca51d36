"""A pack's folder as a history: immutable versions over content-addressed data files.

    PACK/manifest.json           the current version's manifest; replacing it is the commit
    PACK/versions/000007.json    one record per version: its manifest, what changed, how to replay it
    PACK/objects/<sha256>        the data files (safetensors, JSONL), named by their content
    PACK/README.md               model card of the current version
    PACK/cache/                  what a run computed and the next may reuse (protection.py,
                                 calibration.py's unrelated prompts); no
                                 part of any version: deleting it costs time, never an edit

A commit writes the new objects, then the version record, then swaps `manifest.json` (each by
write, fsync, rename). A crash before the swap leaves the previous version current; its leftovers
are collected later (`collect_garbage`, `memoir gc`). Readers take no lock: an object a version
no longer needs is deleted only once it is older than a grace period.

Storage: a version's record always names the sha256 of each of its data files, but the files
themselves are kept only for the current version and every `snapshot_every`-th version. Any
other version is rebuilt on demand by replaying its records' operations from the nearest kept
version and checked against those sha256 (see history.py). Files that do not change (the
background features; the memory when only routing changed) are one object shared by all.

Flat packs (data files beside the manifest: format 1 packs, which have no history, and packs
pulled from the Hub, which carry the records of their versions) are read as they are and move
into the object layout on their first commit.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ._version import __version__
from .card import model_card
from .config import DEFAULT_SNAPSHOT_EVERY, Manifest
from .errors import PackBusyError, PackError
from .pack import (
    CARD_FILE,
    DATA_FILES,
    MANIFEST,
    Pack,
    file_sha256,
    read_pack,
    validate_document,
    write_data_files,
)
from .refs import PackRef, local_ref

VERSIONS, OBJECTS, CACHE = "versions", "objects", "cache"
DEFAULT_GRACE_SECONDS = 3600.0  # what a commit's own gc leaves of unneeded files younger than this


def is_committed(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def head_version(path: Path) -> int:
    """The current version's number (a format 1 pack is version 1)."""
    return read_manifest(path).version or 1


def read_manifest(path: Path) -> Manifest:
    """The current manifest, validated against the schema before anything else is read."""
    path = Path(path)
    if not path.is_dir():
        raise PackError(f"{path}: no such pack (folder not found)")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise PackError(f"{path}: not a memoir pack (no {MANIFEST})")
    document = _read_json(manifest_path)
    validate_document(document, manifest_path)
    return Manifest.from_dict(document)


def record_manifest(record: dict) -> Manifest:
    """The manifest a version record holds (validated when the record was read)."""
    return Manifest.from_dict(record["manifest"])


def read_record(path: Path, number: int) -> dict:
    """Version `number`'s record; only versions up to the current one exist."""
    head = head_version(path)
    if not 1 <= number <= head:
        raise PackError(f"{path}: no version {number} (versions are 1 to {head})")
    file = path / VERSIONS / f"{number:06d}.json"
    if not file.is_file():
        if not (path / VERSIONS).is_dir() and number == 1:  # a format 1 pack: its one version
            manifest = read_manifest(path)
            return {
                "version": 1,
                "parent": None,
                "created_at": manifest.updated_at,
                "kind": "import",
                "message": "format 1 pack",
                "changes": {},
                "facts": [],
                "ops": [],
                "manifest": manifest.to_dict(),
            }
        raise PackError(f"{file}: version record missing")
    record = _read_json(file)
    validate_document(record, file, "version.schema.json", "version record")
    if record["version"] != number:
        raise PackError(f"{file}: holds version {record['version']}, not {number}")
    validate_document(record["manifest"], file)
    return record


def records(path: Path) -> list[dict]:
    """Every version's record, oldest first."""
    return [read_record(path, n) for n in range(1, head_version(path) + 1)]


def stored(path: Path, manifest: Manifest) -> bool:
    """Whether all of a version's data files are on disk (else it must be replayed). A flat pack
    holds only its current version's."""
    if _is_flat(path, manifest):
        return (manifest.version or 1) == head_version(path)
    return all(_object_file(path, manifest, name).is_file() for name in manifest.files)


def load_pack(ref: str | Path | PackRef) -> Pack:
    """The pack at `ref` (current version, or `@N` if its files are kept; see history.materialise)."""
    ref = local_ref(ref)
    manifest = read_manifest(ref.path) if ref.version is None else record_manifest(read_record(ref.path, ref.version))
    if not stored(ref.path, manifest):
        raise NotStoredError(
            f"{ref}: this version's files are not kept; it is rebuilt by replaying its edits, "
            "which needs the base model"
        )
    pack = read_pack(manifest, ref.path / MANIFEST, lambda name: _object_file(ref.path, manifest, name))
    pack.path, pack.version = ref.path, manifest.version or 1
    pack.label = None if ref.version is None else f"{ref.path.name}@{ref.version}"
    return pack


class NotStoredError(PackError):
    """The version exists but its data files were not kept: replay it (history.materialise)."""


def commit(pack: Pack, path: Path, record: dict, snapshot_every: int | None = None) -> int:
    """Write `pack` as the next version of the pack at `path` (created if needed); returns its number.

    `record` says what changed: kind, message, changes, facts (the added facts, in full), ops.
    The caller holds `pack_lock`.
    """
    path = Path(path)
    refuse_foreign_folder(path)
    path.mkdir(parents=True, exist_ok=True)
    previous = read_manifest(path) if is_committed(path) else None
    if previous is not None and _is_flat(path, previous):
        _adopt_flat(path, previous)
        previous = read_manifest(path)
    number = (previous.version or 1) + 1 if previous else 1
    manifest = pack.manifest.copy()  # the pack changes only once the commit has happened
    manifest.format_version, manifest.tool_version, manifest.version = 2, __version__, number
    manifest.updated_at = _now()
    manifest.snapshot_every = snapshot_every or manifest.snapshot_every or DEFAULT_SNAPSHOT_EVERY
    manifest.counts.edits, manifest.counts.active = len(pack.memory.bank), int(pack.memory.bank.active.sum())
    manifest.counts.keys = len(pack.memory.keys)
    manifest.files = _write_objects(pack, path)
    document = manifest.to_dict()
    record = {
        "version": number,
        "parent": number - 1 if previous else None,
        "created_at": manifest.updated_at,
        "tool_version": __version__,
        **record,
        "manifest": document,
    }
    write_atomic(path / VERSIONS / f"{number:06d}.json", json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    pause_point("commit:record")
    write_atomic(path / MANIFEST, json.dumps(document, indent=2) + "\n")
    pause_point("commit:manifest")
    pack.memory.manifest, pack.path, pack.version, pack.label = manifest, path, number, None
    write_atomic(path / CARD_FILE, model_card(pack))
    collect_garbage(path, grace_seconds=DEFAULT_GRACE_SECONDS)
    return number


def kept_versions(path: Path) -> set[int]:
    """Versions whose files stay on disk: the current one, every `snapshot_every`-th, and any that
    cannot be replayed (an imported format 1 pack: its edits were not recorded)."""
    manifest = read_manifest(path)
    head, every = manifest.version or 1, manifest.keep_every
    imported = {1} if read_record(path, 1)["kind"] == "import" else set()  # only ever version 1
    return {head} | set(range(every, head + 1, every)) | imported


@dataclass
class GcResult:
    """What `memoir gc` removed, and what it kept."""

    pack: str
    removed_objects: int
    removed_bytes: int
    removed_records: int
    kept_versions: list[int]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def collect_garbage(path: Path, grace_seconds: float = DEFAULT_GRACE_SECONDS, keep: Iterable[int] = ()) -> GcResult:
    """Delete what no kept version needs: objects older than `grace_seconds`, and an interrupted
    commit's records (numbered past the current version) and staging folders. The caller holds
    the pack's lock.

    The grace period is what lets readers go without a lock: a reader that read the previous
    manifest a moment ago still finds its objects (git's gc keeps loose objects two weeks for the
    same reason). Records past the head and staging folders are never read, only written under
    the lock, so they go at once. Versions in `keep` keep their files as well as the policy's.
    """
    head = head_version(path)
    versions = kept_versions(path) | {n for n in keep if 1 <= n <= head}
    needed = {entry["sha256"] for n in versions for entry in read_record(path, n)["manifest"]["files"].values()}
    cutoff = time.time() - grace_seconds
    removed = removed_bytes = records = 0
    for file in (path / OBJECTS).iterdir() if (path / OBJECTS).is_dir() else ():
        if file.name not in needed and file.stat().st_mtime <= cutoff:
            removed, removed_bytes = removed + 1, removed_bytes + file.stat().st_size
            file.unlink()
    for file in (path / VERSIONS).iterdir() if (path / VERSIONS).is_dir() else ():
        if not file.name.endswith(".json") or not file.stem.isdigit() or int(file.stem) > head:
            records += 1
            file.unlink()
    for leftover in path.glob(".staging-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    return GcResult(str(path), removed, removed_bytes, records, sorted(versions))


@dataclass(frozen=True)
class WriteOptions:
    """How a writer makes a new version: the message recorded with it (memoir log), and what it does
    while another process writes the pack: wait (after telling `on_wait` why) or fail at once."""

    message: str | None = None
    wait: bool = True
    on_wait: Callable[[str], None] | None = None


@contextmanager
def pack_lock(path: str | Path, options: WriteOptions = WriteOptions()) -> Iterator[None]:
    """Serialise writers of one pack with a lock file beside it (`.NAME.lock`).

    A second writer waits or fails at once, as `options` say.
    """
    from filelock import FileLock, Timeout

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path.parent / f".{path.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if not options.wait:
            raise PackBusyError(
                f"{path}: another memoir process is writing this pack; try again once it is done"
            ) from None
        if options.on_wait:
            options.on_wait(f"{path}: another memoir process is writing this pack; waiting for it to finish...")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


@contextmanager
def writing(path: str | Path, options: WriteOptions = WriteOptions()) -> Iterator[Path]:
    """Write access to an existing pack: it is named if missing before anything (even a lock file)
    is written, then its lock is held (see pack_lock)."""
    path = Path(path)
    head_version(path)
    with pack_lock(path, options):
        yield path


def pause_point(name: str) -> None:
    """Crash-test hook: with MEMOIR_PAUSE_AT=NAME[#N] the process stops here (the N-th time, default
    the first), writes MEMOIR_PAUSE_FILE and waits until that file is deleted, so a test can SIGKILL
    it at a known moment, or let it go on while another process runs."""
    wanted = os.environ.get("MEMOIR_PAUSE_AT")
    if not wanted:
        return
    point, _, count = wanted.partition("#")
    if point != name:
        return
    _PAUSE_HITS[name] = _PAUSE_HITS.get(name, 0) + 1
    if _PAUSE_HITS[name] == int(count or 1):
        signal_file = Path(os.environ["MEMOIR_PAUSE_FILE"])
        signal_file.write_text(name)
        while signal_file.exists():
            time.sleep(0.05)


_PAUSE_HITS: dict[str, int] = {}


def _object_file(path: Path, manifest: Manifest, name: str) -> Path:
    if _is_flat(path, manifest):
        return path / name
    return path / OBJECTS / manifest.files[name]["sha256"]


def _write_objects(pack: Pack, path: Path) -> dict:
    """Serialise the pack's data files into objects/ (a file already there is the same content);
    returns their manifest entries."""
    (path / OBJECTS).mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=path))
    try:
        files = write_data_files(pack, staging)
        for name, entry in files.items():
            target = path / OBJECTS / entry["sha256"]
            if not target.is_file() or file_sha256(target) != entry["sha256"]:
                _fsync(staging / name)
                os.replace(staging / name, target)
        _fsync(path / OBJECTS)
        pause_point("commit:objects")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return files


def _adopt_flat(path: Path, manifest: Manifest) -> None:
    """Move a flat pack (format 1, or a version pulled from the Hub) into the object layout.

    The objects folder appears whole (one rename), so a crash leaves either layout readable.
    """
    read_pack(manifest, path / MANIFEST, lambda name: path / name)  # every file checked before it is adopted
    if not (path / OBJECTS).is_dir():
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=path))
        for name, entry in manifest.files.items():
            shutil.copyfile(path / name, staging / entry["sha256"])
            _fsync(staging / entry["sha256"])
        os.rename(staging, path / OBJECTS)
        _fsync(path)
    if manifest.version is None:  # format 1: its state becomes version 1 of a history
        manifest.format_version, manifest.version = 2, 1
        manifest.snapshot_every = manifest.snapshot_every or DEFAULT_SNAPSHOT_EVERY
        document = manifest.to_dict()
        record: dict[str, object] = {
            "version": 1,
            "parent": None,
            "created_at": manifest.updated_at,
            "tool_version": __version__,
            "kind": "import",
            "message": "format 1 pack",
            "changes": {},
            "facts": [],
            "ops": [],
            "manifest": document,
        }
        write_atomic(path / VERSIONS / "000001.json", json.dumps(record, indent=1, ensure_ascii=False) + "\n")
        write_atomic(path / MANIFEST, json.dumps(document, indent=2) + "\n")
    for name in DATA_FILES:
        (path / name).unlink(missing_ok=True)


def _is_flat(path: Path, manifest: Manifest) -> bool:
    """Data files beside the manifest: format 1, or a pack exported for the Hub (no objects/ folder)."""
    return manifest.format_version == 1 or not (path / OBJECTS).is_dir()


def protection_cache(path: Path) -> Path:
    """The protection matrix an edit run leaves for the next one (protection.py)."""
    return path / CACHE / "protection.safetensors"


def unrelated_cache(path: Path) -> Path:
    """The unrelated prompts' features an edit run leaves for the next one (calibration.py)."""
    return path / CACHE / "unrelated.safetensors"


def refuse_foreign_folder(path: Path) -> None:
    """Never write into a folder that is not a pack (an interrupted first commit is fine)."""
    if not path.exists() or is_committed(path):
        return
    ours = {VERSIONS, OBJECTS, CACHE}
    if not path.is_dir() or any(p.name not in ours and not p.name.startswith(".staging-") for p in path.iterdir()):
        raise PackError(f"{path} exists and is not a memoir pack; refusing to overwrite it")


def write_atomic(file: Path, text: str) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    temporary = file.parent / f".{file.name}.tmp-{os.getpid()}"
    temporary.write_text(text)
    _fsync(temporary)
    os.replace(temporary, file)
    _fsync(file.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_json(file: Path):
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PackError(f"{file}: not valid JSON ({error})") from None


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
