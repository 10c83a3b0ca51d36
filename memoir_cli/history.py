"""A pack's versions as a history, the `git` way: log, replay, rollback, rebuild.

Every change is a new, immutable version (store.py). A version's record holds the operations that
made it from its parent, in order, with the facts it added in full:

    ["deactivate", ID]      routing never selects edit ID again
    ["edit", ID]            fit fact ID (from the record's "facts") into the memory
    ["refit", ID]           fit active edit ID's fact again under its stored mask (a repair)
    ["restore", N]          the state becomes exactly version N's (a rollback)
    ["reset"]               an empty memory and bank, same layer, permutation, background (a rebuild)

and the settings in force (its manifest). Replaying them on the same device and dtype reproduces
the version bit for bit (editing is deterministic there); the record's sha256 of each data file
proves it. That is how versions whose files were not kept are read back.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .bank import MaskBank
from .config import Manifest
from .editor import editing
from .errors import BadInputError, PackError
from .facts import Fact
from .hub import resolve
from .memory import ResidualMemory
from .models import LoadedModel
from .pack import Pack, write_data_files
from .refs import HubRef, PackRef, parse_ref
from .store import (
    NotStoredError,
    WriteOptions,
    commit,
    head_version,
    load_pack,
    read_record,
    record_manifest,
    stored,
    writing,
)

ModelLoader = Callable[[Pack], LoadedModel]


@dataclass
class NewVersion:
    """What a command that adds one version did (revert, rollback, rebuild)."""

    pack: str
    version: int
    reverted: list[str] | None = None  # revert: the edits deactivated
    restored: int | None = None  # rollback: the version whose state came back

    def to_json(self) -> dict:
        record: dict = {"pack": self.pack}
        if self.reverted is not None:
            record["reverted"] = self.reverted
        if self.restored is not None:
            record["restored"] = self.restored
        return dict(record, version=self.version)


@dataclass
class WeightChange:
    """How much of the residual memory differs between two states."""

    columns_touched: int
    norm: float
    relative: float | None  # norm / ||before||; None when before is all zeros

    def to_json(self) -> dict:
        return {
            "columns_touched": self.columns_touched,
            "norm": round(self.norm, 6),
            "relative": None if self.relative is None else round(self.relative, 6),
        }


def weight_change(before: torch.Tensor, after: torch.Tensor) -> WeightChange:
    delta = after.float() - before.float()
    base = float(before.float().norm())
    norm = float(delta.norm())
    return WeightChange(int((delta != 0).any(dim=0).sum()), norm, norm / base if base > 0 else None)


def edit_record(
    kind: str,
    message: str | None,
    ops: list[list],
    facts: list[Fact],
    replaced: dict[str, str] | None = None,
    change: WeightChange | None = None,
    **extra,
) -> dict:
    """The part of a version record the caller knows: what was done and why."""
    added = [op[1] for op in ops if op[0] == "edit"]
    replaced = {new: old for new, old in (replaced or {}).items() if new in added}
    deactivated = [op[1] for op in ops if op[0] == "deactivate" and op[1] not in replaced.values()]
    return {
        "kind": kind,
        "message": message or _default_message(kind, added, replaced, deactivated, extra),
        "changes": {
            "added": [i for i in added if i not in replaced],
            "replaced": replaced,
            "deactivated": deactivated,
            **extra,
        },
        "facts": [f.to_json() for f in facts],
        "ops": ops,
        "stats": change.to_json() if change else None,
    }


def _default_message(kind: str, added, replaced, deactivated, extra) -> str:
    if kind == "rollback":
        return f"rollback to version {extra['restored']}"
    if kind == "rebuild":
        return f"rebuild: {len(added)} active facts replayed into a compact memory"
    if kind == "repair":
        return f"repair: {len(extra['refitted'])} forgotten edits refitted"
    parts = [
        f"{n} {label}"
        for n, label in (
            (len(added) - len(replaced), "added"),
            (len(replaced), "replaced"),
            (len(deactivated), "deactivated"),
        )
        if n
    ]
    return f"{kind}: " + (", ".join(parts) if parts else "settings changed")


def log(path: str | Path, upto: int | None = None) -> list[dict]:
    """One entry per version, oldest first, up to version `upto` (default: the current one), as
    `git log v3` shows the history that led to v3: what `memoir log` lists."""
    path = Path(path)
    last = head_version(path) if upto is None else read_record(path, upto)["version"]  # read_record refuses a bad N
    entries = []
    for record in (read_record(path, number) for number in range(1, last + 1)):
        manifest, changes = record_manifest(record), record.get("changes", {})
        entries.append(
            {
                "version": record["version"],
                "created_at": record["created_at"],
                "kind": record.get("kind"),
                "message": record.get("message"),
                "added": len(changes.get("added", [])),
                "replaced": len(changes.get("replaced", {})),
                "deactivated": len(changes.get("deactivated", [])),
                "restored": changes.get("restored"),
                "edits": manifest.counts.edits,
                "active": manifest.counts.active,
                "stored": stored(path, manifest),
                "stats": record.get("stats"),
            }
        )
    return entries


def open_pack(
    ref: str | Path | PackRef | HubRef, model_loader: ModelLoader | None = None, token: str | None = None
) -> Pack:
    """The pack that `ref` names (refs.py: a folder, `PACK@N`, or a Hub repo `user/pack[@v3]`,
    downloaded through the Hugging Face cache with `token`), replaying the version if its files
    were not kept (that needs `model_loader`). Every command that reads a pack opens it here."""
    local, label = resolve(parse_ref(ref), token)
    try:
        pack = load_pack(local)
    except NotStoredError:
        if model_loader is None or local.version is None:  # the current version is always kept
            raise
        pack = materialise(local.path, local.version, model_loader)
    if label is not None:
        pack.label = label
    return pack


def versions_from(path: Path, start: int, model_loader: ModelLoader) -> Iterator[Pack]:
    """Versions `start` to the current one, oldest first: each kept one read, each other one
    replayed from the version before it, so a long history is replayed once (what push sends)."""
    previous: Pack | None = None
    for number in range(start, head_version(path) + 1):
        try:
            previous = load_pack(PackRef(path, number))
        except NotStoredError:
            if previous is None:
                previous = materialise(path, number, model_loader)
            else:
                previous = replay(previous, read_record(path, number), model_loader(previous), path, model_loader)
        yield previous


def materialise(path: Path, number: int, model_loader: ModelLoader) -> Pack:
    """Version `number` of the pack at `path`, replayed from the nearest earlier kept version."""
    chain = []
    while number > 0:
        try:
            pack = load_pack(PackRef(path, number))
            break
        except NotStoredError:
            chain.append(read_record(path, number))
            number -= 1
    else:  # replay from the empty memory; permutation and background are the same in every version
        pack = _empty_like(load_pack(path))
    loaded = model_loader(pack)
    for record in reversed(chain):
        pack = replay(pack, record, loaded, path, model_loader)
    return pack


def replay(parent: Pack, record: dict, loaded: LoadedModel, path: Path, model_loader: ModelLoader) -> Pack:
    """Apply one version's operations to its parent's state and prove the result is that version."""
    manifest = record_manifest(record)
    facts = {f["id"]: Fact.from_json(f) for f in record.get("facts", [])}
    pack = _with_manifest(parent, manifest)
    ops = record.get("ops", [])
    if ops and ops[0][0] == "restore":
        pack = _with_manifest(materialise(path, ops[0][1], model_loader), manifest)
        ops = ops[1:]
    if ops and ops[0][0] == "reset":
        pack = _empty_like(pack)
        ops = ops[1:]
    with editing(loaded, pack) as editor:
        for op, value in ops:
            if op == "deactivate":
                pack.memory.deactivate(value)
            elif op == "edit":
                editor.edit(facts[value])
            elif op == "edit_batch":
                editor.edit_batch([facts[fact_id] for fact_id in value])
            elif op == "refit":
                editor.refit(value)
            else:
                raise PackError(f"{path}: version {record['version']}: unknown operation {op!r}")
    _check_reproduced(pack, record, path)
    pack.path, pack.version, pack.label = path, record["version"], f"{path.name}@{record['version']}"
    return pack


def _check_reproduced(pack: Pack, record: dict, path: Path) -> None:
    with tempfile.TemporaryDirectory() as folder:
        files = write_data_files(pack, Path(folder))
    differing = [
        name for name, entry in record["manifest"]["files"].items() if files[name]["sha256"] != entry["sha256"]
    ]
    if differing:
        replay_info = record.get("replay") or {}
        raise PackError(
            f"{path}: replaying version {record['version']} here did not reproduce it ({', '.join(differing)} differ); "
            f"it was made on {replay_info.get('device', '?')} in {replay_info.get('dtype', '?')} with torch "
            f"{replay_info.get('torch', '?')}. Roll back to a kept version instead (memoir log shows which are kept)."
        )


def _with_manifest(pack: Pack, manifest: Manifest) -> Pack:
    """A copy of `pack`'s state (weights, bank, facts) under another version's settings."""
    return Pack(memory=pack.memory.copy(manifest), facts=list(pack.facts), path=pack.path)


def _empty_like(pack: Pack) -> Pack:
    """An empty memory and bank with `pack`'s settings, layer, permutation and background."""
    memory = ResidualMemory(
        torch.zeros_like(pack.memory.weight),
        MaskBank(d_ff=pack.memory.bank.d_ff),
        pack.memory.permutation,
        pack.memory.background,
        pack.manifest,
    )
    return Pack(memory=memory, facts=[], path=pack.path)


def replay_info(loaded: LoadedModel) -> dict:
    """Where a version was made: replay reproduces it bit for bit only on the same kind of device."""
    device = loaded.input_device
    return {
        "device": device.type,
        "dtype": loaded.dtype,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def rollback(
    path: str | Path,
    to: int,
    model_loader: ModelLoader,
    write: WriteOptions = WriteOptions(),
) -> NewVersion:
    """Make version `to`'s state current again, as a new version."""
    with writing(path, write) as path:
        head = head_version(path)
        if to == head:
            raise BadInputError(f"{path}: version {to} is already the current version")
        current = load_pack(path)
        target = open_pack(PackRef(path, to), model_loader)
        record = edit_record(
            "rollback",
            write.message,
            [["restore", to]],
            [],
            restored=to,
            change=weight_change(current.memory.weight, target.memory.weight),
        )
        record["replay"] = read_record(path, to).get("replay")
        version = commit(target, path, record, current.manifest.snapshot_every)  # storage policy stays current
    return NewVersion(str(path), version, restored=to)


def rebuild(
    path: str | Path,
    model_loader: ModelLoader,
    write: WriteOptions = WriteOptions(),
    on_start: Callable[[int], None] | None = None,
    on_fact: Callable[[int, object], None] | None = None,
) -> NewVersion:
    """Replay the active facts, in order, into an empty memory (dropping reverted and replaced edits)."""
    with writing(path, write) as path:
        current = load_pack(path)
        active = current.active_facts()
        loaded = model_loader(current)
        pack = _empty_like(_with_manifest(current, current.manifest.copy()))
        with editing(loaded, pack) as editor:
            if on_start:
                on_start(len(active))
            for number, fact in enumerate(active):
                result = editor.edit(fact)
                if on_fact:
                    on_fact(number, result)
        record = edit_record(
            "rebuild",
            write.message,
            [["reset"]] + [["edit", f.id] for f in active],
            active,
            change=weight_change(current.memory.weight, pack.memory.weight),
        )
        record["changes"] = {
            "added": [],
            "replaced": {},
            "deactivated": [],
            "rebuilt": len(active),
            "dropped": len(current.facts) - len(active),
        }
        record["replay"] = replay_info(loaded)
        return NewVersion(str(path), commit(pack, path, record))
