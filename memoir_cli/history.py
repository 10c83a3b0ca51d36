"""A pack's versions as a history, the `git` way: log, replay, rollback, rebuild.

Every change is a new, immutable version (store.py). A version's record holds the operations that
made it from its parent, in order, with the facts it added in full:

    ["deactivate", ID]      routing never selects edit ID again
    ["edit", ID]            fit fact ID (from the record's "facts") into the memory
    ["restore", N]          the state becomes exactly version N's (a rollback)
    ["reset"]               an empty memory and bank, same layer, permutation, background (a rebuild)

and the settings in force (its manifest). Replaying them on the same device and dtype reproduces
the version bit for bit (editing is deterministic there); the record's sha256 of each data file
proves it. That is how versions whose files were not kept are read back.
"""
from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .bank import MaskBank
from .editor import Editor
from .errors import BadInputError, PackError
from .facts import Fact
from .memory import attach, detach
from .models import LoadedModel
from .pack import Pack, edit_settings, write_data_files
from .store import NotStoredError, PackRef, commit, head_version, load_pack, pack_lock, read_record, stored

ModelLoader = Callable[[Pack], LoadedModel]


@dataclass
class WeightChange:
    """How much of the residual memory differs between two states."""

    columns_touched: int
    norm: float
    relative: float | None  # norm / ||before||; None when before is all zeros

    def to_json(self) -> dict:
        return {"columns_touched": self.columns_touched, "norm": round(self.norm, 6),
                "relative": None if self.relative is None else round(self.relative, 6)}


def weight_change(before: torch.Tensor, after: torch.Tensor) -> WeightChange:
    delta = after.float() - before.float()
    base = float(before.float().norm())
    norm = float(delta.norm())
    return WeightChange(int((delta != 0).any(dim=0).sum()), norm, norm / base if base > 0 else None)


def edit_record(kind: str, message: str | None, ops: list[list], facts: list[Fact],
                replaced: dict[str, str] | None = None, change: WeightChange | None = None, **extra) -> dict:
    """The part of a version record the caller knows: what was done and why."""
    added = [op[1] for op in ops if op[0] == "edit"]
    replaced = {new: old for new, old in (replaced or {}).items() if new in added}
    deactivated = [op[1] for op in ops if op[0] == "deactivate" and op[1] not in replaced.values()]
    return {
        "kind": kind,
        "message": message or _default_message(kind, added, replaced, deactivated, extra),
        "changes": {"added": [i for i in added if i not in replaced], "replaced": replaced, "deactivated": deactivated,
                    **extra},
        "facts": [f.to_json() for f in facts],
        "ops": ops,
        "stats": change.to_json() if change else None,
    }


def _default_message(kind: str, added, replaced, deactivated, extra) -> str:
    if kind == "rollback":
        return f"rollback to version {extra['restored']}"
    if kind == "rebuild":
        return f"rebuild: {len(added)} active facts replayed into a compact memory"
    parts = [f"{n} {label}" for n, label in ((len(added) - len(replaced), "added"), (len(replaced), "replaced"),
                                             (len(deactivated), "deactivated")) if n]
    return f"{kind}: " + (", ".join(parts) if parts else "settings changed")


def log(path: str | Path, upto: int | None = None) -> list[dict]:
    """One entry per version, oldest first, up to version `upto` (default: the current one), as
    `git log v3` shows the history that led to v3: what `memoir log` lists."""
    path = Path(path)
    last = head_version(path) if upto is None else read_record(path, upto)["version"]  # read_record refuses a bad N
    entries = []
    for record in (read_record(path, number) for number in range(1, last + 1)):
        manifest, changes = record["manifest"], record.get("changes", {})
        entries.append({
            "version": record["version"],
            "created_at": record["created_at"],
            "kind": record.get("kind"),
            "message": record.get("message"),
            "added": len(changes.get("added", [])),
            "replaced": len(changes.get("replaced", {})),
            "deactivated": len(changes.get("deactivated", [])),
            "restored": changes.get("restored"),
            "edits": manifest["counts"]["edits"],
            "active": manifest["counts"]["active"],
            "stored": stored(path, manifest),
            "stats": record.get("stats"),
        })
    return entries


def open_pack(ref: str | Path | PackRef, model_loader: ModelLoader | None = None) -> Pack:
    """The pack at `ref` (a folder, `PACK@N`, or a Hub repo `user/pack[@v3]`, downloaded through the
    Hugging Face cache), replaying the version if its files were not kept (that needs `model_loader`)."""
    from .hub import resolve_reference

    ref, name = resolve_reference(ref)
    try:
        pack = load_pack(ref)
    except NotStoredError:
        if model_loader is None:
            raise
        pack = materialise(ref.path, ref.version, model_loader)
    if name is not None:
        pack.memory.name = name
    return pack


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
    manifest = copy.deepcopy(record["manifest"])
    facts = {f["id"]: Fact.from_json(f) for f in record.get("facts", [])}
    pack = _with_manifest(parent, manifest)
    ops = record.get("ops", [])
    if ops and ops[0][0] == "restore":
        pack = _with_manifest(materialise(path, ops[0][1], model_loader), manifest)
        ops = ops[1:]
    if ops and ops[0][0] == "reset":
        pack = _empty_like(pack)
        ops = ops[1:]
    wrapper = attach(loaded.model, pack)
    try:
        editor = Editor(loaded.model, loaded.tokenizer, wrapper, pack.memory, pack.facts, manifest["layer"]["index"],
                        manifest["prefixes"], edit_settings(pack))
        for op, value in ops:
            if op == "deactivate":
                pack.memory.bank.deactivate(value)
            elif op == "edit":
                editor.edit(facts[value])
            else:
                raise PackError(f"{path}: version {record['version']}: unknown operation {op!r}")
    finally:
        detach(loaded.model)
    _check_reproduced(pack, record, path)
    pack.path, pack.version = path, record["version"]
    pack.memory.name = f"{path.name}@{record['version']}"
    return pack


def _check_reproduced(pack: Pack, record: dict, path: Path) -> None:
    with tempfile.TemporaryDirectory() as folder:
        files = write_data_files(pack, Path(folder))
    differing = [name for name, entry in record["manifest"]["files"].items() if files[name]["sha256"] != entry["sha256"]]
    if differing:
        replay_info = record.get("replay") or {}
        raise PackError(
            f"{path}: replaying version {record['version']} here did not reproduce it ({', '.join(differing)} differ); "
            f"it was made on {replay_info.get('device', '?')} in {replay_info.get('dtype', '?')} with torch "
            f"{replay_info.get('torch', '?')}. Roll back to a kept version instead (memoir log shows which are kept)."
        )


def _with_manifest(pack: Pack, manifest: dict) -> Pack:
    memory = copy.copy(pack.memory)
    memory.weight = pack.memory.weight.clone()
    memory.bank = MaskBank(pack.memory.bank.d_ff, pack.memory.bank.k, pack.memory.bank.masks.clone(),
                           list(pack.memory.bank.ids), pack.memory.bank.active.clone())
    memory.threshold = manifest["routing"]["threshold"]
    return Pack(manifest=manifest, memory=memory, facts=list(pack.facts), path=pack.path)


def _empty_like(pack: Pack) -> Pack:
    memory = copy.copy(pack.memory)
    memory.weight = torch.zeros_like(pack.memory.weight)
    memory.bank = MaskBank(d_ff=pack.memory.bank.d_ff, k=pack.memory.bank.k)
    return Pack(manifest=pack.manifest, memory=memory, facts=[], path=pack.path)


def replay_info(loaded: LoadedModel, dtype: str) -> dict:
    """Where a version was made: replay reproduces it bit for bit only on the same kind of device."""
    device = next(loaded.model.parameters()).device
    return {"device": device.type, "dtype": dtype, "torch": torch.__version__, "threads": torch.get_num_threads()}


def rollback(path: str | Path, to: int, model_loader: ModelLoader, message: str | None = None, wait: bool = True,
             on_wait: Callable[[str], None] | None = None) -> int:
    """Make version `to`'s state current again, as a new version; returns its number."""
    path = Path(path)
    head_version(path)  # a missing pack is named before anything (even a lock file) is written
    with pack_lock(path, wait=wait, on_wait=on_wait):
        head = head_version(path)
        if to == head:
            raise BadInputError(f"{path}: version {to} is already the current version")
        current = load_pack(path)
        target = open_pack(PackRef(path, to), model_loader)
        target.manifest = copy.deepcopy(target.manifest)
        record = edit_record("rollback", message, [["restore", to]], [], restored=to,
                             change=weight_change(current.memory.weight, target.memory.weight))
        record["replay"] = read_record(path, to).get("replay")
        return commit(target, path, record, current.manifest.get("snapshot_every"))  # storage policy stays current


def rebuild(path: str | Path, model_loader: ModelLoader, dtype: str, message: str | None = None, wait: bool = True,
            on_wait: Callable[[str], None] | None = None, on_start: Callable[[int], None] | None = None,
            on_fact: Callable[[int, object], None] | None = None) -> int:
    """Replay the active facts, in order, into an empty memory (dropping reverted and replaced edits)."""
    path = Path(path)
    head_version(path)  # a missing pack is named before anything (even a lock file) is written
    with pack_lock(path, wait=wait, on_wait=on_wait):
        current = load_pack(path)
        active = [f for f, on in zip(current.facts, current.memory.bank.active.tolist()) if on]
        loaded = model_loader(current)
        pack = _empty_like(_with_manifest(current, copy.deepcopy(current.manifest)))
        wrapper = attach(loaded.model, pack)
        try:
            editor = Editor(loaded.model, loaded.tokenizer, wrapper, pack.memory, pack.facts,
                            pack.manifest["layer"]["index"], pack.manifest["prefixes"], edit_settings(pack))
            if on_start:
                on_start(len(active))
            for number, fact in enumerate(active):
                result = editor.edit(fact)
                if on_fact:
                    on_fact(number, result)
        finally:
            detach(loaded.model)
        record = edit_record("rebuild", message, [["reset"]] + [["edit", f.id] for f in active], active,
                             change=weight_change(current.memory.weight, pack.memory.weight))
        record["changes"] = {"added": [], "replaced": {}, "deactivated": [], "rebuilt": len(active),
                             "dropped": len(current.facts) - len(active)}
        record["replay"] = replay_info(loaded, dtype)
        return commit(pack, path, record)
