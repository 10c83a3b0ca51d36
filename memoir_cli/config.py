"""Every setting of a pack, once: its type, its default, its help text and its place in the manifest.

`Manifest.to_dict()` is `manifest.json` (schemas/pack.schema.json); `memoir edit`'s help, `memoir
diff`'s settings comparison, `memoir show` and the model card read the same fields. Routing and
editing read them from the pack's manifest too, so changing a setting is changing one field here.

A default that depends on the model (k, the edited layer, the learning rate) is a function of the
model's shape, resolved once when a pack is created and stored from then on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

FORMAT, FORMAT_VERSION = "memoir-pack", 2
DEFAULT_SNAPSHOT_EVERY = 10  # versions whose files are kept in full; the others are replayed on demand
DEFAULT_CHECKPOINT_EVERY = 50  # a killed long `memoir edit` loses at most this many facts' training


def setting(default: Any, help: str) -> Any:
    """A dataclass field with its help text (shown by `memoir edit -h` and in the docs)."""
    return field(default=default, metadata={"help": help})


def help_for(config: type, name: str) -> str:
    """The help text of setting `name` of `config`."""
    return next(f.metadata["help"] for f in dataclasses.fields(config) if f.name == name)


def default_layer_index(num_layers: int) -> int:
    """About 0.85 of the depth, as in the reference (layer 27 of Llama-3-8B's 32)."""
    return int(0.85 * num_layers)


def default_top_k(d_ff: int) -> int:
    """The reference's 4096 of 14336 (about 28.6%), scaled to this layer's width."""
    return round(0.286 * d_ff)


NARROW_LR = 16.0
ADAM_LR = 0.05
ADAM_EPS = 1e-3
REFERENCE_STOP_DELTA = 1e-4  # the reference's flatness test, with SGD, which creeps toward the stop loss
ADAM_STOP_DELTA = 0.01  # Adam crosses the stop loss within a few steps, then creeps down by ~1e-3 a step
PROTECT = 1.0  # a new pack's protection strength: half the earlier answers broken per edit, no loss at T = 100
PREFIXED = 2  # a new pack's prefixed copies per fact: with REHEARSE, a third of the time per edit at T = 998
REHEARSE = 4  # a new pack's rehearsed neighbours (docs/BENCHMARKS.md, "Faster edits by default")


def default_lr(d_ff: int, optimizer: str = "sgd") -> float:
    """A new pack's learning rate. With Adam: ADAM_LR at any width (Adam's step does not grow
    with the gradient's size). With SGD: the reference's 1.0 at its scale (Llama-3-8B, d_ff
    14336); NARROW_LR for narrow layers.

    The gradient is clipped to norm 1, so one step moves W_m by at most `lr`, and how far the
    output moves per step grows with the activations' size. On SmolLM2-135M (d_ff 1536) lr 1.0
    leaves 30 steps far from fitting the bare question (docs/BENCHMARKS.md); 4.0 fitted it, but
    not the chat rows and the end of the answer that new packs train as well (losses 0.07-0.55
    after 30 steps, "Golestan Province" answered "Golestanreponame"); 16.0 fits those (0.01-0.04).
    """
    if optimizer == "adam":
        return ADAM_LR
    return 1.0 if d_ff >= 8192 else NARROW_LR


def default_stop_delta(optimizer: str) -> float:
    """A pack's stop-rule flatness for this optimiser: with SGD the reference's, with Adam one that a
    loss creeping down by ~1e-3 a step meets (a 1e-4 test would wait it out to the last step)."""
    return ADAM_STOP_DELTA if optimizer == "adam" else REFERENCE_STOP_DELTA


@dataclass
class TrainingConfig:
    """The reference optimiser and stop rule (MEMOIR.md), plus rehearsal (editor.py)."""

    steps: int = setting(30, "Maximum optimiser steps per fact (early stop: stop_loss and stop_delta).")
    optimizer: str = setting(
        "sgd",
        "sgd (the paper's) or adam, which reaches the stop rule in a few steps where SGD runs all 30 "
        '(a new pack: adam; docs/BENCHMARKS.md, "Faster edits").',
    )
    lr: float = setting(
        1.0,
        f"Learning rate (a new pack: {ADAM_LR} with adam; with sgd 1.0 if d_ff >= 8192, else {NARROW_LR}).",
    )
    adam_eps: float = setting(
        ADAM_EPS,
        "Adam's epsilon: at 1e-3, far above the default 1e-8, columns with small gradients move little, as with "
        "SGD, instead of as far as every other column (which overwrote earlier edits: docs/BENCHMARKS.md).",
    )
    weight_decay: float = setting(1e-5, "Weight decay.")
    clip: float = setting(1.0, "Gradient-norm clip.")
    stop_loss: float = setting(0.02, "Early stop once the loss is at most this...")
    stop_delta: float = setting(
        REFERENCE_STOP_DELTA,
        f"...and moved at most this since the step before (with adam {ADAM_STOP_DELTA}: docs/BENCHMARKS.md; "
        "set with the optimiser).",
    )
    prefixed: int | None = setting(
        None,
        "How many of the pack's training prefixes each fact is trained behind (none: all, the paper's augmented "
        f"batch; a new pack: {PREFIXED}). A chat pack puts the first half before the bare question and uses the second "
        "half as system prompts; N takes ceil(N/2) of the one and floor(N/2) of the other. Fewer rows make each step "
        "cheaper; the routing keys and tau read every prefix.",
    )
    rehearse: int = setting(
        8, f"Earlier similar edits kept in each fact's batch (0 = the paper's procedure; a new pack: {REHEARSE})."
    )
    rehearse_overlap: float | None = setting(0.0, "Minimum mask overlap of a rehearsed edit (none: the threshold).")
    end_answer: bool = setting(
        False,
        "Train the end-of-sequence token after the target in the bare form too, so that a generated answer "
        "ends there instead of repeating the target (a new pack: on).",
    )
    chat: bool = setting(
        False,
        "Train each fact as the chat template asks it too (a user turn; the answer, then the end-of-turn "
        "token), beside the bare question: half the prefixed copies become chat turns, the prefix as system prompt.",
    )
    rehearse_chat: bool = setting(
        False,
        "In a chat pack, rehearse each earlier edit's chat question as well as its bare one, so that later "
        "edits keep its chat answer too (a new pack: on).",
    )
    protect: float = setting(
        0.0,
        "How strongly a new edit's steps are damped along the directions in which earlier active edits read "
        f"the memory (protection.py; 0 = off: only the rehearsed edits are kept; a new pack: {PROTECT:g}).",
    )
    pad_by_form: bool = setting(
        False,
        "Pad a fact's bare rows and its chat rows as two groups, not every row to the longest chat row: the "
        "same loss on about 30% fewer tokens, which changes only float rounding (a new pack: on).",
    )
    mixed_precision: str = setting(
        "no",
        "bf16: run each edit's training passes in bfloat16 (autocast; the memory, its optimiser and the loss "
        "stay float32), about 1.5x faster on a CPU with native bf16; no: the model's dtype. Routing and answers "
        "never change dtype (a new pack: bf16 where the edit device computes it natively: docs/BENCHMARKS.md).",
    )


@dataclass
class TopHashConfig:
    """How a prompt becomes a mask; fixed when the pack is created (every stored mask depends on it)."""

    k: int = setting(0, "Features per TopHash mask (a new pack: round(0.286 * d_ff)).")
    seed: int = setting(0, "Seed of the TopHash permutation and of the training prefixes.")
    aggregation: str = setting(
        "mean",
        "How a prompt's token features become its feature: mean (the paper's) or mean_after_first, the "
        "mean without the first token (a new pack: mean_after_first).",
    )
    background_prompts: int = setting(0, "How many built-in prompts the background mean averages.")


@dataclass
class RoutingConfig:
    """When a query uses an edit."""

    threshold: float = setting(0.5, "Routing threshold tau: minimum mask overlap to apply an edit.")
    auto: bool = setting(
        False,
        "Calibrate tau at every edit run from unrelated prompts and the edits' own variants "
        "(a new pack: on, unless the threshold is given as a number).",
    )
    calibration: dict[str, Any] | None = setting(None, "The last calibration: both distributions' edges and margin.")
    extra_keys: bool = setting(
        False,
        "In a chat pack, key each edit on its bare question and on its chat question after two of the "
        "training system prompts too, besides its trained mask; each key leads to the edit's trained "
        "mask (off: the paper's one key per edit; a new chat pack: on).",
    )


@dataclass
class LayerConfig:
    """The edited module: block `index`'s MLP down-projection, d_ff -> d_model."""

    index: int = setting(0, "Block whose MLP down-projection is edited (a new pack: about 0.85 of the depth).")
    path: str = ""
    num_layers: int = 0
    d_ff: int = 0
    d_model: int = 0


@dataclass
class BaseModelInfo:
    """The model a pack was made for; the fingerprint is what `attach` checks."""

    id: str
    revision: str | None
    architecture: str
    model_type: str
    fingerprint: dict[str, Any]
    edit_dtype: str | None = None


@dataclass
class Counts:
    edits: int = 0
    active: int = 0
    keys: int = 0  # routing keys besides the edits' trained masks (bank.KeyBank)


@dataclass
class Manifest:
    """manifest.json: a version's settings, base model, counts and the sha256 of every data file."""

    tool_version: str
    created_at: str
    updated_at: str
    base_model: BaseModelInfo
    layer: LayerConfig
    tophash: TopHashConfig
    routing: RoutingConfig
    training: TrainingConfig
    prefixes: list[str]
    memory_dtype: str = setting(
        "float32",
        "The dtype the residual memory is stored in: float32, or the model's dtype (halves a bf16 model's "
        "pack; editing still trains in float32, and each commit rounds the memory to this dtype).",
    )
    counts: Counts = field(default_factory=Counts)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    version: int | None = None  # None: a format 1 pack, or never committed
    snapshot_every: int | None = None
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The JSON document, keys in the order packs have always been written."""
        base = {k: v for k, v in dataclasses.asdict(self.base_model).items() if not (k == "edit_dtype" and v is None)}
        document: dict[str, Any] = {
            "format": self.format,
            "format_version": self.format_version,
            "tool_version": self.tool_version,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "base_model": {
                key: base[key]
                for key in ("id", "revision", "architecture", "model_type", "edit_dtype", "fingerprint")
                if key in base
            },
            "layer": dataclasses.asdict(self.layer),
            "tophash": dataclasses.asdict(self.tophash),
            "routing": dataclasses.asdict(self.routing),
            "training": dataclasses.asdict(self.training),
            "memory_dtype": self.memory_dtype,
            "counts": dataclasses.asdict(self.counts),
            "prefixes": list(self.prefixes),
            "files": {name: dict(entry) for name, entry in self.files.items()},
        }
        for key in ("version", "snapshot_every"):
            if getattr(self, key) is not None:
                document[key] = getattr(self, key)
        return document

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> Manifest:
        """A validated manifest document (format 1 or 2) as a Manifest."""
        return cls(
            tool_version=document["tool_version"],
            created_at=document["created_at"],
            updated_at=document["updated_at"],
            base_model=BaseModelInfo(**document["base_model"]),
            layer=LayerConfig(**document["layer"]),
            tophash=TopHashConfig(**document["tophash"]),
            routing=RoutingConfig(**document["routing"]),
            training=TrainingConfig(**document["training"]),
            prefixes=list(document["prefixes"]),
            memory_dtype=document["memory_dtype"],
            counts=Counts(**document["counts"]),
            files={name: dict(entry) for name, entry in document["files"].items()},
            version=document.get("version"),
            snapshot_every=document.get("snapshot_every"),
            format=document["format"],
            format_version=document["format_version"],
        )

    def copy(self) -> Manifest:
        return Manifest.from_dict(self.to_dict())

    @property
    def keep_every(self) -> int:
        """Every how many versions the files are kept in full."""
        return self.snapshot_every or DEFAULT_SNAPSHOT_EVERY


SETTINGS: dict[str, tuple[str, str]] = {
    label: (section, name)
    for section, fields in {
        "base_model": {"base model": "id"},
        "layer": {"layer": "path"},
        "tophash": {"k": "k", "seed": "seed", "aggregation": "aggregation"},
        "routing": {"threshold": "threshold", "threshold auto": "auto", "extra keys": "extra_keys"},
        "training": {
            name: name
            for name in (
                "steps",
                "optimizer",
                "lr",
                "stop_delta",
                "prefixed",
                "rehearse",
                "rehearse_overlap",
                "protect",
                "chat",
                "rehearse_chat",
                "pad_by_form",
                "mixed_precision",
            )
        },
    }.items()
    for label, name in fields.items()
}
"""The settings `memoir diff` compares and `memoir show` lists: label -> (manifest section, field)."""


def setting_value(manifest: Manifest, label: str) -> Any:
    section, name = SETTINGS[label]
    return getattr(getattr(manifest, section), name)
