"""`--threshold auto`: tau calibrated for each pack, from prompts it already has.

Routing compares a prompt's best mask overlap with tau. Two distributions decide where tau
belongs:
- unrelated prompts (the built-in background prompts and a set of short factual questions, asked
  bare and, in a chat pack, in chat) must stay below it: their best overlap with the pack's active
  edits, recomputed at every edit run because every new edit can raise it;
- each edit's own variants (its training prompts: behind the self-written prefixes, bare and in
  chat) must reach it: their overlap with the edit's own mask, measured once when the edit is made
  and kept as a histogram of BINS bins in the manifest, so a later run needs no earlier fact again.

"Unrelated" here is the LOCALITY quantile of their best overlaps (with 400 prompts, the third
highest): a few short chat questions ("Who was Cleopatra?") come as close to an edit as its own
bare question does, and tau above the single highest cost generalisation (docs/BENCHMARKS.md).
Separable, tau sits halfway across the gap. Overlapping, locality comes first: tau sits just
above that quantile, and the calibration says how many variants fall below it and how much
locality a tau low enough for every variant would put at risk. A ZsRE benchmark's rephrasings
and locality questions are never among these prompts: they stay evaluation-only.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .cache import load_tensors, save_tensors
from .tophash import background_prompts

if TYPE_CHECKING:
    from .editor import Editor
    from .facts import Fact

BINS = 100  # variant overlaps are kept in bins of 0.01
LOCALITY = 0.995  # the share of unrelated prompts tau keeps from every edit


@dataclass
class Calibration:
    """Where tau was put and why: the two distributions' edges, the margin between them and what is
    at risk when they overlap."""

    threshold: float
    unrelated: int  # unrelated prompts scored
    unrelated_max: float | None  # their best overlap at the LOCALITY quantile (None: none scored)
    unrelated_routed: float  # share of unrelated prompts at or above tau (at most 1 - LOCALITY)
    variants: int  # edit variants in the histogram
    variants_min: float | None  # their lowest own overlap (the floor of its bin)
    margin: float | None  # variants_min - unrelated_max: negative when the two overlap
    variants_below: float  # share of variants below tau: they would miss their own edit
    unrelated_at_variants_min: float  # share of unrelated prompts a tau at variants_min would route
    histogram: list[int]  # variants' own overlaps, BINS bins over [0, 1]

    @property
    def overlapping(self) -> bool:
        return self.margin is not None and self.margin <= 0

    def warning(self) -> str | None:
        """One line for the user when tau cannot separate the two distributions."""
        if not self.overlapping:
            return None
        return (
            f"routing threshold: unrelated prompts reach overlaps of {self.unrelated_max:.2f} and edits' own "
            f"variants go down to {self.variants_min:.2f}; tau {self.threshold:.4f} keeps locality, but "
            f"{self.variants_below:.0%} of the variants fall below it, and a tau low enough for all of them "
            f"would route {self.unrelated_at_variants_min:.0%} of unrelated prompts to an edit"
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def reported(self) -> dict[str, Any]:
        """What a user reads (--json, show, eval): everything but the histogram."""
        return {key: value for key, value in self.to_json().items() if key != "histogram"}

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Calibration:
        return cls(**document)


def calibrate(unrelated: Sequence[float], histogram: Sequence[int], k: int, default: float) -> Calibration:
    """tau from the unrelated prompts' best overlaps and the variants' histogram (see the module).

    With no variants (an empty pack) tau is `default`; with no unrelated overlap above 0 (no active
    edit) only the variants decide.
    """
    histogram = list(histogram) or [0] * BINS
    variants = sum(histogram)
    ranked = sorted(float(o) for o in unrelated)
    top = ranked[math.ceil(LOCALITY * len(ranked)) - 1] if ranked else 0.0
    floor = next((b / BINS for b, count in enumerate(histogram) if count), None)
    if floor is None:
        threshold, margin = default, None
    elif floor > top:
        threshold, margin = round((top + floor) / 2, 4), round(floor - top, 4)
    else:  # every possible overlap is a multiple of 1/k: half a step above the highest is above it
        threshold, margin = top + 0.5 / k, round(floor - top, 4)  # unrounded: 0.5 / k may be under 1e-4
    below = sum(count for b, count in enumerate(histogram) if (b + 1) / BINS <= threshold)
    at_floor = sum(o >= floor for o in ranked) if floor is not None else 0
    return Calibration(
        threshold=threshold,
        unrelated=len(unrelated),
        unrelated_max=round(top, 4) if unrelated else None,
        unrelated_routed=round(sum(o >= threshold for o in ranked) / len(ranked), 4) if ranked else 0.0,
        variants=variants,
        variants_min=floor,
        margin=margin,
        variants_below=round(below / variants, 4) if variants else 0.0,
        unrelated_at_variants_min=round(at_floor / len(unrelated), 4) if unrelated else 0.0,
        histogram=histogram,
    )


def add_to_histogram(histogram: Sequence[int], overlaps: Sequence[float]) -> list[int]:
    """`histogram` (BINS bins; empty: none yet) with `overlaps` counted in."""
    counts = list(histogram) or [0] * BINS
    for overlap in overlaps:
        counts[min(int(overlap * BINS + 1e-9), BINS - 1)] += 1
    return counts


def calibration_prompts() -> list[str]:
    """The unrelated prompts: the background prompts and short factual questions on common topics."""
    text = resources.files("memoir_cli").joinpath("data/calibration_prompts.txt").read_text()
    return background_prompts() + [line.strip() for line in text.splitlines() if line.strip()]


def variant_overlaps(editor: Editor, fact: Fact) -> list[float]:
    """The overlaps of `fact`'s variants (behind each of the pack's prefixes, trained behind or not:
    `training.prefixed` changes training, never routing) with its own edit, as routing sees them:
    the best over the edit's keys (its trained mask and any further keys)."""
    memory = editor.memory
    bare, systems = editor.all_prefix_roles()
    prompts = [f"{prefix}. {fact.prompt}" for prefix in bare] + ([fact.prompt] if editor.settings.chat else [])
    features = [_features(editor, prompts, chat=False)]
    features += [_features(editor, [fact.prompt], chat=True, system=system) for system in systems]
    masks = memory.query_masks(torch.cat(features))
    return memory.edit_overlaps(masks, memory.bank.row_of(fact.id)).tolist()


class UnrelatedPrompts:
    """The unrelated prompts as one edit run scores them, asked bare and, in a chat pack, in chat.

    Their features are read at the edit layer's input, below the memory, so they depend only on the
    unedited model and the prompts: the run computes them at its first calibration and reuses them
    at every checkpoint's; only their overlaps move as edits are added. With a `cache` file, a run
    also starts from the features the last run left there (`save`, after its commit), once the
    model gives the first prompt of each form the very same bits; 400 forward passes become 2.
    """

    def __init__(self, editor: Editor, cache: Path | None = None) -> None:
        self.editor, self.cache = editor, cache
        self.prompts = calibration_prompts()
        self._masks: torch.Tensor | None = None  # [prompts x forms, d_ff]
        self._computed: dict[str, torch.Tensor] | None = None  # features and probe to cache (`save`)

    def overlaps(self) -> list[float]:
        """Each prompt's best overlap with the pack's active edits (0 with none)."""
        if self._masks is None:
            self._masks = self.editor.memory.query_masks(self._features())
        _, overlaps = self.editor.memory.best_match(self._masks)
        return overlaps.tolist()

    def save(self) -> None:
        """Leave the features this run computed in the cache for the pack's next run."""
        if self.cache is not None and self._computed is not None:
            save_tensors(self.cache, self._computed, {"key": self._key()})

    def _forms(self) -> list[bool]:
        return [False, True] if self.editor.settings.chat else [False]

    def _key(self) -> str:
        """What the features are of, the model aside: the prompts, the forms and the pooling."""
        digest = hashlib.sha256()
        for text in [*self.prompts, repr(self._forms()), self.editor.pack.manifest.tophash.aggregation]:
            digest.update(text.encode() + b"\0")
        return digest.hexdigest()

    def _features(self) -> torch.Tensor:
        if self.cache is None:
            return self._read(self.prompts)
        probe = self._read(self.prompts[:1])
        cached = load_tensors(self.cache)
        if cached is not None and self._holds(*cached, probe):
            return cached[0]["features"]
        features = self._read(self.prompts)
        self._computed = {"features": features, "probe": probe}
        return features

    def _read(self, prompts: list[str]) -> torch.Tensor:
        """`prompts`' features in each form, form after form: [len(prompts) x forms, d_ff]."""
        return torch.cat([_features(self.editor, prompts, chat=form) for form in self._forms()])

    def _holds(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str], probe: torch.Tensor) -> bool:
        """Whether cached features are of these prompts and forms, and of this model (its probe)."""
        return (
            metadata.get("key") == self._key()
            and {"features", "probe"} <= tensors.keys()
            and torch.equal(tensors["probe"], probe)  # False for another shape too
            and tensors["features"].shape == (len(self.prompts) * len(probe), probe.shape[1])
        )


def _features(editor: Editor, prompts: list[str], chat: bool, system: str | None = None) -> torch.Tensor:
    return editor.features(prompts, chat=chat, system=system)
