"""Scoring packs as the paper does (ZsRE, EasyEdit's "token em"), with routing statistics.

- Reliability: feed `prompt + " " + target`; the share of target positions where the
  teacher-forced argmax is the target token.
- Generalisation: the same with each rephrasing of the prompt.
- Locality: feed `loc + " " + loc_answer` to the edited and to the unedited model; the share of
  answer positions where their argmax predictions agree.

Routing is decided from the prompt tokens only, as it is for a real query. `--generate` adds a
stricter, user-facing check: greedy generation must start with the target (for locality: equal the
base model's text).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

import torch
import torch.nn.functional as F
from torch import nn

from . import wild
from .batching import pad_left, prompt_target_ids
from .chat import Asking
from .facts import Fact
from .memory import MemoirLinear
from .models import input_device
from .wild import Judge

LOCALITY_FALLBACK_TOKENS = 8


class Protocol(str, Enum):
    """How answers are scored: the paper's teacher forcing (always reported, for comparison with
    the literature), or WILD's generated answers beside it (wild.py)."""

    paper = "paper"
    wild = "wild"


GenerateFn = Callable[[list[str], int, bool, "Asking | None"], list[str]]
"""(prompts, max_new_tokens, edited, asking) -> greedy continuations, one per prompt."""


@dataclass
class Probe:
    """One teacher-forced item: `prompt + " " + target`, scored on the target's tokens."""

    prompt: str
    target: str


@dataclass
class Row:
    """One tokenised teacher-forced row: its token ids, the positions routing reads (1: the
    question's tokens, as for a real query) and where the answer's tokens start."""

    ids: list[int]
    route: list[int]
    answer_start: int

    @classmethod
    def of(cls, tokenizer, probe: Probe) -> Row:
        """`probe.prompt + " " + probe.target`, routed on all of the prompt's tokens."""
        ids, n_prompt = prompt_target_ids(tokenizer, probe.prompt, probe.target)
        n_prompt = max(n_prompt, 1)
        return cls(ids, [1] * n_prompt + [0] * (len(ids) - n_prompt), n_prompt)


@dataclass
class Scored:
    """One row's teacher-forced argmax per answer token, the mean NLL of its answer tokens (how far
    from right a wrong answer is), and the edit it was routed to."""

    predicted: list[int]
    expected: list[int]
    nll: float
    route: dict | None = None

    @property
    def greedy(self) -> bool:
        """Whether every answer token is the greedy choice: greedy generation starts with the answer."""
        return self.predicted == self.expected


def token_accuracy(predicted: Sequence[int], expected: Sequence[int]) -> float:
    """Share of positions where the prediction is the expected token (EasyEdit's token em)."""
    if not expected:
        return 0.0
    return sum(p == e for p, e in zip(predicted, expected)) / len(expected)


def quartiles(values: Sequence[float]) -> dict | None:
    """min, q1, median, q3, max (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    q1, median, q3 = statistics.quantiles(ordered, n=4, method="inclusive") if len(ordered) > 1 else ordered * 3
    return {"min": ordered[0], "q1": q1, "median": median, "q3": q3, "max": ordered[-1]}


Progress = Callable[[int, int], None]
"""Called with (done, in all) as long work goes (sequences scored, questions checked, edits
refitted): a long run shows where it is."""


class Tally:
    """Work done towards a total known before it starts, each step reported to `on_progress`:
    a Scorer's `on_batch`, or a loop's step."""

    def __init__(self, total: int, on_progress: Progress) -> None:
        self.done, self.total, self.on_progress = 0, total, on_progress

    def __call__(self, count: int) -> None:
        self.done += count
        self.on_progress(self.done, self.total)


class Scorer:
    """Teacher-forced predictions of a model with packs attached (or bypassed: the base model)."""

    def __init__(self, model: nn.Module, tokenizer, wrapper: MemoirLinear, batch_size: int = 16) -> None:
        self.model, self.tokenizer, self.wrapper, self.batch_size = model, tokenizer, wrapper, batch_size
        self.device = input_device(model)
        self.on_batch: Callable[[int], None] = lambda rows: None

    def teacher_forced(self, probes: list[Probe], edited: bool = True) -> list[Scored]:
        """Each probe scored as `prompt + " " + target` (Row.of)."""
        return self.score([Row.of(self.tokenizer, p) for p in probes], edited)

    @torch.no_grad()
    def score(self, rows: list[Row], edited: bool = True) -> list[Scored]:
        """Each row scored on its answer tokens, routed from its `route` tokens (`edited`), or on
        the base model alone."""
        results: list[Scored] = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            batch = pad_left([r.ids for r in chunk], self.tokenizer.pad_token_id, self.device)
            width = batch["input_ids"].shape[1]
            if edited:
                route = pad_left([r.route for r in chunk], 0, self.device)["input_ids"]
                with self.wrapper.routing_from(route):
                    logits = self.model(**batch, use_cache=False).logits  # [rows, width, vocab]
                routes: list[dict | None] = list(self.wrapper.describe_routes())
            else:
                with self.wrapper.bypassed():
                    logits = self.model(**batch, use_cache=False).logits
                routes = [None] * len(chunk)
            argmax = logits.argmax(dim=-1).cpu()
            for row, item in enumerate(chunk):
                answer_start = width - len(item.ids) + item.answer_start
                predicted = argmax[row, answer_start - 1 : width - 1].tolist()
                expected = batch["input_ids"][row, answer_start:]
                nll = F.cross_entropy(logits[row, answer_start - 1 : width - 1].float(), expected).item()
                results.append(Scored(predicted, expected.tolist(), nll, routes[row]))
            self.on_batch(len(chunk))
        return results


@dataclass
class EvalReport:
    """Scores (means over records), routing statistics, and per-record details."""

    scores: dict
    routing: dict
    records: list[dict] = field(default_factory=list)
    baseline: dict | None = None
    generate: dict | None = None
    wild: dict | None = None  # per context ("question", "chat"): the WILD protocol's scores (wild.py)
    wild_baseline: dict | None = None  # the same for the unedited model

    def summary(self) -> dict:
        report = {"records": len(self.records), "scores": self.scores, "routing": self.routing}
        for key in ("baseline", "generate", "wild", "wild_baseline"):
            if getattr(self, key) is not None:
                report[key] = getattr(self, key)
        return report

    def to_json(self) -> dict:
        return dict(self.summary(), per_record=self.records)


@dataclass
class ProbeSet:
    """The probes of a list of facts: one reliability probe each, and the rephrasing and locality
    probes of all of them in one list each, with the index of the fact each belongs to."""

    rel: list[Probe]
    gen: list[Probe]
    gen_owner: list[int]
    loc: list[Probe]
    loc_owner: list[int]

    @classmethod
    def of(cls, facts: list[Fact]) -> ProbeSet:
        gen_owner, gen = _flatten([[Probe(r, f.target) for r in f.rephrases] for f in facts])
        loc_owner, loc = _flatten(
            [[Probe(item["prompt"], item.get("target") or "") for item in f.locality] for f in facts]
        )
        return cls([Probe(f.prompt, f.target) for f in facts], gen, gen_owner, loc, loc_owner)

    def gen_of(self, index: int, values: list) -> list:
        """The entries of `values` (one per rephrasing probe) that belong to fact `index`."""
        return [value for value, owner in zip(values, self.gen_owner) if owner == index]

    def loc_of(self, index: int, values: list) -> list:
        """The entries of `values` (one per locality probe) that belong to fact `index`."""
        return [value for value, owner in zip(values, self.loc_owner) if owner == index]


def evaluate(
    scorer: Scorer,
    facts: list[Fact],
    generate_fn: GenerateFn,
    check_generation: bool = False,
    baseline: bool = False,
    on_progress: Progress | None = None,
    edit_targets: Mapping[tuple[str, str], str] | None = None,
    wild_contexts: Sequence[str] = (),
    judge: Judge | None = None,
) -> EvalReport:
    """Score `facts` (their prompts, rephrasings and locality prompts) on the scorer's model.

    `generate_fn(prompts, max_new_tokens, edited, asking)` gives greedy continuations; it supplies
    the answers of locality prompts that have none, the generation check, and the WILD protocol's
    answers in each of `wild_contexts` (wild.py). `edit_targets` maps
    (pack, edit id) to that edit's target: with it, routing also counts rephrasings that reach an
    edit giving their answer, which is what a user with consistent facts cares about when several
    edits share a subject.
    """
    probes = ProbeSet.of(facts)
    generate_fn = _metered(scorer, probes, generate_fn, check_generation, baseline, on_progress, len(wild_contexts))
    _fill_locality_targets(probes.loc, generate_fn)

    rel = scorer.teacher_forced(probes.rel)
    gen = scorer.teacher_forced(probes.gen)
    loc_pairs = list(zip(scorer.teacher_forced(probes.loc), scorer.teacher_forced(probes.loc, edited=False)))

    records = []
    for index, fact in enumerate(facts):
        gens, locs = probes.gen_of(index, gen), probes.loc_of(index, loc_pairs)
        records.append(
            {
                "id": fact.id,
                "rel": token_accuracy(rel[index].predicted, rel[index].expected),
                "gen": _mean([token_accuracy(g.predicted, g.expected) for g in gens]),
                "loc": _mean([token_accuracy(e.predicted, b.predicted) for e, b in locs]),
                "rel_route": rel[index].route,
                "gen_routes": [g.route for g in gens],
                "loc_routes": [e.route for e, _ in locs],
            }
        )
    report = EvalReport(scores=_scores(records), routing=_routing(facts, records, edit_targets), records=records)
    if baseline:
        rel_base = scorer.teacher_forced(probes.rel, edited=False)
        gen_base = scorer.teacher_forced(probes.gen, edited=False)
        report.baseline = _scores(
            [
                {
                    "rel": token_accuracy(rel_base[i].predicted, rel_base[i].expected),
                    "gen": _mean([token_accuracy(g.predicted, g.expected) for g in probes.gen_of(i, gen_base)]),
                    "loc": 1.0 if fact.locality else None,
                }
                for i, fact in enumerate(facts)
            ]
        )
    if check_generation:
        report.generate = _generation_check(facts, probes, generate_fn, scorer.tokenizer, records)
    if wild_contexts:
        report.wild = wild.check(facts, probes, generate_fn, list(wild_contexts), records, judge)
        if baseline:
            report.wild_baseline = wild.unedited(facts, probes, generate_fn, list(wild_contexts))
    return report


def _metered(
    scorer: Scorer,
    probes: ProbeSet,
    generate_fn: GenerateFn,
    check_generation: bool,
    baseline: bool,
    on_progress: Progress | None,
    wild_contexts: int = 0,
) -> GenerateFn:
    """Report progress to `on_progress` from the scorer's batches and from `generate_fn`, which is
    returned wrapped to generate a batch at a time. The total is every sequence the run will score
    or generate, known before it starts."""
    if on_progress is None:
        return generate_fn
    n_rel, n_gen, n_loc = len(probes.rel), len(probes.gen), len(probes.loc)
    total = (
        n_rel
        + n_gen
        + 2 * n_loc
        + sum(not p.target.strip() for p in probes.loc)
        + ((n_rel + n_gen) * (1 + wild_contexts) if baseline else 0)
        + (n_rel + n_gen + 2 * n_loc) * (int(check_generation) + wild_contexts)
    )
    advance = Tally(total, on_progress)

    def generate_in_batches(
        prompts: list[str], max_new_tokens: int, edited: bool, asking: Asking | None = None
    ) -> list[str]:
        texts = []
        for start in range(0, len(prompts), scorer.batch_size):
            chunk = prompts[start : start + scorer.batch_size]
            texts.extend(generate_fn(chunk, max_new_tokens, edited, asking))
            advance(len(chunk))
        return texts

    scorer.on_batch = advance
    on_progress(0, total)
    return generate_in_batches


def _fill_locality_targets(probes: list[Probe], generate_fn) -> None:
    """A locality prompt without an answer is scored on the base model's own greedy continuation."""
    missing = [p for p in probes if not p.target.strip()]
    if not missing:
        return
    texts = generate_fn([p.prompt for p in missing], LOCALITY_FALLBACK_TOKENS, False, None)
    for probe, text in zip(missing, texts):
        probe.target = text.strip() or "."


def _generation_check(facts: list[Fact], probes: ProbeSet, generate_fn, tokenizer, records: list[dict]) -> dict:
    """Greedy generation: edit prompts and rephrasings must start with the target, locality prompts
    must generate the base model's text. Adds each record's result to `records`."""

    def outputs(group: list[Probe], edited: bool = True, tokens: int | None = None) -> list[str]:
        if not group:
            return []
        budget = tokens or max(len(tokenizer(p.target)["input_ids"]) for p in group) + 2
        return generate_fn([p.prompt for p in group], budget, edited, None)

    rel_out, gen_out = outputs(probes.rel), outputs(probes.gen)
    loc_same = [e == b for e, b in zip(outputs(probes.loc, tokens=16), outputs(probes.loc, edited=False, tokens=16))]
    per_record = []
    for index, fact in enumerate(facts):
        hits = [o.strip().startswith(fact.target) for o in probes.gen_of(index, gen_out)]
        record = {
            "rel": float(rel_out[index].strip().startswith(fact.target)),
            "gen": _mean(hits),
            "loc": _mean(probes.loc_of(index, loc_same)),
        }
        records[index]["generate"] = dict(record, output=rel_out[index])
        per_record.append(record)
    return _scores(per_record)


def _scores(records: list[dict]) -> dict:
    scores = {key: _mean([r[key] for r in records if r[key] is not None]) for key in ("rel", "gen", "loc")}
    present = [v for v in scores.values() if v is not None]
    scores["avg"] = sum(present) / len(present) if present else None
    return scores


def _routing(facts: list[Fact], records: list[dict], edit_targets: Mapping[tuple[str, str], str] | None) -> dict:
    rel = [r["rel_route"] for r in records]
    gen = [(route, fact) for fact, r in zip(facts, records) for route in r["gen_routes"]]
    loc = [route for r in records for route in r["loc_routes"]]

    def gives_answer(route: dict, fact: Fact) -> bool:
        target = (edit_targets or {}).get((route["pack"], route["edit_id"]))
        return target is not None and target.strip() == fact.target.strip()

    return {
        "rel_to_own_edit": _mean([route["edit_id"] == fact.id for route, fact in zip(rel, facts)]),
        "gen_to_right_edit": _mean([route["edit_id"] == fact.id for route, fact in gen]),
        "gen_to_same_answer": None if edit_targets is None else _mean([gives_answer(r, f) for r, f in gen]),
        "loc_to_no_edit": _mean([route["edit_id"] is None for route in loc]),
        "overlap": {
            "rel": quartiles([route["overlap"] for route in rel]),
            "gen": quartiles([route["overlap"] for route, _ in gen]),
            "loc": quartiles([route["overlap"] for route in loc]),
        },
    }


def _flatten(groups: list[list[Probe]]) -> tuple[list[int], list[Probe]]:
    owners, probes = [], []
    for index, group in enumerate(groups):
        owners.extend([index] * len(group))
        probes.extend(group)
    return owners, probes


def _mean(values) -> float | None:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else None
