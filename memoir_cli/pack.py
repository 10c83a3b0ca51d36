"""An edit pack: its manifest, its data files' encoding, and their validation.

    manifest.json           settings, base-model fingerprint, counts, sha256 of every data file
    memory.safetensors      "weight": the residual memory W_m [d_model, d_ff]
    masks.safetensors       "masks": bit-packed mask bank [n, ceil(d_ff/8)] (uint8), "active" [n],
                            "permutation" [d_ff]; metadata "edit_ids": JSON list, one per row;
                            "keys": further routing keys [m, ceil(d_ff/8)] (uint8) and "key_edits"
                            [m], the bank row each leads to (both absent in packs made before keys)
    background.safetensors  "mean": the background prompt feature [d_ff]
    facts.jsonl             one fact per bank row, in the same order
    README.md               model card

Where these files live on disk, and how versions share them, is store.py's job. Reading
validates the manifest against the schema before anything else, then checks every file's size
and sha256 and every tensor's shape. Only safetensors, JSON and JSONL are ever read: a pack is
data, never code.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ._version import __version__
from .bank import KeyBank, MaskBank
from .calibration import Calibration
from .config import BaseModelInfo, LayerConfig, Manifest, RoutingConfig, TopHashConfig, TrainingConfig
from .errors import PackError
from .facts import Fact, load_schema
from .memory import MemoirLinear, ResidualMemory
from .models import DTYPES, fingerprints_match, layer_fingerprint, model_config

MANIFEST = "manifest.json"
MEMORY_FILE, MASKS_FILE, BACKGROUND_FILE = "memory.safetensors", "masks.safetensors", "background.safetensors"
FACTS_FILE, CARD_FILE = "facts.jsonl", "README.md"
DATA_FILES = (MEMORY_FILE, MASKS_FILE, BACKGROUND_FILE, FACTS_FILE)


@dataclass
class Pack:
    """An edit pack in memory: its residual memory (which holds the manifest) and its facts (one
    per bank row)."""

    memory: ResidualMemory
    facts: list[Fact]
    path: Path | None = None
    version: int | None = None  # None: never committed
    label: str | None = None  # the name routes report: a Hub reference, or PACK@N; default the folder's name

    @property
    def manifest(self) -> Manifest:
        return self.memory.manifest

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        return self.path.name if self.path else "(unsaved pack)"

    @property
    def base_model_id(self) -> str:
        return self.manifest.base_model.id

    def active_facts(self) -> list[Fact]:
        """The facts routing may still select, in order."""
        return [f for f, on in zip(self.facts, self.memory.bank.active.tolist()) if on]

    def check_base(self, model: nn.Module) -> None:
        """Refuse a model other than the one this pack was made for, naming both."""
        path = self.manifest.layer.path
        try:
            module = model.get_submodule(path)
        except AttributeError:
            raise PackError(f"pack {self.name} edits {path}, which model {_model_name(model)} does not have") from None
        linear = module.base if isinstance(module, MemoirLinear) else module
        if not isinstance(linear, nn.Linear):
            raise PackError(f"pack {self.name} edits {path}, which is a {type(linear).__name__} in this model")
        if not fingerprints_match(self.manifest.base_model.fingerprint, layer_fingerprint(linear.weight)):
            raise PackError(
                f"pack {self.name} was made for base model {self.base_model_id!r}, "
                f"not for {_model_name(model)!r} (the edited layer's weights differ)"
            )

    def routing_summary(self) -> dict:
        """tau and how it was set: fixed, or calibrated (calibration.py) with its margins."""
        routing = self.manifest.routing
        calibration = Calibration.from_json(routing.calibration).reported() if routing.calibration else {}
        calibration.pop("threshold", None)  # the manifest's, which it set
        return {"pack": self.name, "threshold": routing.threshold, "auto": routing.auto, **calibration}

    def summary(self) -> dict:
        """What `memoir show` prints."""
        m = self.manifest
        return {
            "path": str(self.path) if self.path else None,
            "base_model": m.base_model.id,
            "revision": m.base_model.revision,
            "architecture": m.base_model.architecture,
            "layer": m.layer.path,
            "d_ff": m.layer.d_ff,
            "k": m.tophash.k,
            "aggregation": m.tophash.aggregation,
            "threshold": m.routing.threshold,
            "routing": self.routing_summary(),
            "seed": m.tophash.seed,
            "edits": m.counts.edits,
            "active": m.counts.active,
            "keys": m.counts.keys,  # routing keys besides the edits' trained masks
            "memory_dtype": m.memory_dtype,
            "bytes": sum(f["bytes"] for f in m.files.values()),
            "created_at": m.created_at,
            "updated_at": m.updated_at,
            "tool_version": m.tool_version,
            "version": m.version or 1,
        }


def new_pack(
    *,
    model: nn.Module,
    model_id: str,
    revision: str | None,
    layer,
    tophash: TopHashConfig,
    routing: RoutingConfig,
    training: TrainingConfig,
    prefixes: list[str],
    background: torch.Tensor,
    permutation: torch.Tensor,
    edit_dtype: str,
) -> Pack:
    """An empty pack for `model`'s edit layer (nothing is written until it is committed, store.commit)."""
    base = model.get_submodule(layer.path)
    assert isinstance(base, nn.Linear), "find_edit_layer checked it"
    config = model_config(model)
    now = _now()
    manifest = Manifest(
        tool_version=__version__,
        created_at=now,
        updated_at=now,
        base_model=BaseModelInfo(
            id=model_id,
            revision=revision,
            architecture=(config.architectures or [type(model).__name__])[0],
            model_type=config.model_type,
            edit_dtype=edit_dtype,
            fingerprint=layer_fingerprint(base.weight),
        ),
        layer=LayerConfig(
            index=layer.index, path=layer.path, num_layers=layer.num_layers, d_ff=layer.d_in, d_model=layer.d_out
        ),
        tophash=tophash,
        routing=routing,
        training=training,
        prefixes=prefixes,
    )
    memory = ResidualMemory(
        weight=torch.zeros(layer.d_out, layer.d_in, dtype=torch.float32),
        bank=MaskBank(d_ff=layer.d_in),
        permutation=permutation,
        background=background.float().cpu(),
        manifest=manifest,
    )
    return Pack(memory=memory, facts=[])


def write_data_files(pack: Pack, folder: Path) -> dict:
    """Serialise the pack's data files into `folder`; returns their manifest entries (sha256, bytes).

    The bytes depend only on the pack's contents, so equal states give equal files (and objects).
    """
    memory = pack.memory
    stored = memory.weight.to(DTYPES[pack.manifest.memory_dtype]).contiguous()
    if stored.dtype != memory.weight.dtype:  # the pack in memory is the version written: later edits start from it
        memory.weight.copy_(stored)
    save_file({"weight": stored}, str(folder / MEMORY_FILE))
    keys = {"keys": memory.keys.packed(), "key_edits": memory.keys.owners} if len(memory.keys) else {}
    save_file(
        {
            "masks": memory.bank.packed(),
            "active": memory.bank.active.to(torch.uint8),
            "permutation": memory.permutation.to(torch.int64),
            **keys,  # only when there are keys: a pack without them keeps its files' bytes
        },
        str(folder / MASKS_FILE),
        metadata={"edit_ids": json.dumps(memory.bank.ids)},
    )
    save_file({"mean": memory.background.contiguous()}, str(folder / BACKGROUND_FILE))
    (folder / FACTS_FILE).write_text("".join(json.dumps(f.to_json(), ensure_ascii=False) + "\n" for f in pack.facts))
    return {
        name: {"sha256": file_sha256(folder / name), "bytes": (folder / name).stat().st_size} for name in DATA_FILES
    }


def read_pack(manifest: Manifest, where: Path, file_for: Callable[[str], Path]) -> Pack:
    """Build a Pack from a validated manifest and its data files (`file_for(name)` locates each).

    Every file must match the manifest's size and sha256, every tensor the shape the manifest
    implies; any problem is a PackError naming the file and what is wrong.
    """
    for name in DATA_FILES:
        entry = manifest.files.get(name)
        if entry is None:
            raise PackError(f"{where}: 'files' does not list {name}")
        file = file_for(name)
        if not file.is_file():
            raise PackError(f"{file}: {name} is missing from the pack")
        if file.stat().st_size != entry["bytes"] or file_sha256(file) != entry["sha256"]:
            raise PackError(f"{file}: {name}: checksum mismatch (the file was changed after the pack was written)")
    k, d_ff, d_model = manifest.tophash.k, manifest.layer.d_ff, manifest.layer.d_model
    memory_file, masks_file, background_file = file_for(MEMORY_FILE), file_for(MASKS_FILE), file_for(BACKGROUND_FILE)
    memory_tensors = _load_safetensors(memory_file)
    masks_tensors, metadata = _load_safetensors(masks_file, with_metadata=True)
    background = _load_safetensors(background_file)
    try:
        ids = json.loads(metadata.get("edit_ids", "[]"))
    except json.JSONDecodeError:
        raise PackError(f"{masks_file}: metadata 'edit_ids' is not JSON") from None
    n = manifest.counts.edits
    _expect_shape(memory_file, memory_tensors, "weight", (d_model, d_ff))
    if memory_tensors["weight"].dtype != DTYPES[manifest.memory_dtype]:
        raise PackError(
            f"{memory_file}: tensor 'weight' is {memory_tensors['weight'].dtype}, not {manifest.memory_dtype}"
        )
    _expect_shape(masks_file, masks_tensors, "masks", (n, (d_ff + 7) // 8))
    _expect_shape(masks_file, masks_tensors, "active", (n,))
    _expect_shape(masks_file, masks_tensors, "permutation", (d_ff,))
    _expect_shape(background_file, background, "mean", (d_ff,))
    permutation = masks_tensors["permutation"].long()
    if not torch.equal(permutation.sort().values, torch.arange(d_ff)):
        raise PackError(f"{masks_file}: 'permutation' is not a permutation of range({d_ff})")
    facts = _read_pack_facts(file_for(FACTS_FILE))
    if len(ids) != n or len(facts) != n or [f.id for f in facts] != ids or len(set(ids)) != n:
        raise PackError(f"{where}: {FACTS_FILE}, the mask bank and the manifest disagree on the edits")
    bank = MaskBank.from_packed(d_ff, masks_tensors["masks"].numpy(), ids, masks_tensors["active"].bool())
    keys = _read_keys(masks_file, masks_tensors, manifest.counts.keys, bank)
    if (n and not bool((bank.features_per_mask() == k).all())) or not bool((keys.features_per_mask() == k).all()):
        raise PackError(f"{masks_file}: every mask must select exactly k={k} features")
    memory = ResidualMemory(
        weight=memory_tensors["weight"].float(),
        bank=bank,
        permutation=permutation,
        background=background["mean"].float(),
        manifest=manifest,
        keys=keys,
    )
    return Pack(memory=memory, facts=facts)


def _read_keys(file: Path, tensors: dict, m: int, bank: MaskBank) -> KeyBank:
    """The further routing keys (none in a pack made before them), each leading to a bank row."""
    if m == 0 and "keys" not in tensors and "key_edits" not in tensors:
        return KeyBank(bank.d_ff)
    _expect_shape(file, tensors, "keys", (m, (bank.d_ff + 7) // 8))
    _expect_shape(file, tensors, "key_edits", (m,))
    owners = tensors["key_edits"].long()
    if m and not bool(((owners >= 0) & (owners < len(bank))).all()):
        raise PackError(f"{file}: 'key_edits' names a row outside the mask bank")
    return KeyBank.from_packed(bank.d_ff, tensors["keys"].numpy(), owners.numpy(), bank.active)


def validate_document(document, where: Path, schema: str = "pack.schema.json", what: str = "manifest") -> None:
    """Check a manifest (or, with `schema`, another pack document) before anything trusts it."""
    validator = jsonschema.Draft202012Validator(load_schema(schema))
    error = next(iter(sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))), None)
    if error is not None:
        field = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise PackError(f"{where}: invalid {what} at '{field}': {error.message}")


def _load_safetensors(file: Path, with_metadata: bool = False):
    from safetensors import safe_open

    try:
        tensors = load_file(str(file))
        if with_metadata:
            with safe_open(str(file), framework="pt") as handle:
                return tensors, handle.metadata() or {}
        return tensors
    except (SafetensorError, OSError, ValueError) as error:
        raise PackError(f"{file}: not a readable safetensors file ({error})") from None


def _expect_shape(file: Path, tensors: dict, name: str, shape: tuple[int, ...]) -> None:
    if name not in tensors:
        raise PackError(f"{file}: tensor '{name}' is missing")
    if tuple(tensors[name].shape) != shape:
        raise PackError(f"{file}: tensor '{name}' has shape {tuple(tensors[name].shape)}, expected {shape}")


def _read_pack_facts(file: Path) -> list[Fact]:
    facts = []
    for number, line in enumerate(file.read_text().splitlines(), start=1):
        try:
            facts.append(Fact.from_json(json.loads(line)))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise PackError(f"{file}:{number}: not a valid fact record") from None
    return facts


def file_sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _model_name(model: nn.Module) -> str:
    return getattr(model.config, "_name_or_path", None) or type(model).__name__
