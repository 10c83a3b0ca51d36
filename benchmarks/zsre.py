"""The paper's ZsRE protocol on SmolLM2-135M: edit the first T records sequentially into one pack,
then score all T (teacher-forced Rel / Gen / Loc, MEMOIR.md), for T = 10, 100, 1000.

Contrasts, run the same way: the unedited model, and plain fine-tuning of the same
down-projection (same optimiser, steps and batch; every column trained, always applied, nothing
kept of earlier edits: k = d_ff, threshold 0, no rehearsal and no protection).

Next to the paper's teacher-forced columns: the same three scores from greedy generation, as a user
sees them (`memoir eval --generate`: the answer must start with the target; a locality answer must
equal the base model's); the WILD protocol's (`memoir eval --protocol wild --context both`: 50 new
tokens cut at the first ".", newline or EOS, normalised) for the bare question and for the question
asked through the chat template, each with its repetition rate (the target twice or more in an
answer); the share of questions asked with a system prompt after two earlier turns that reach the
edit the bare question reaches ("same route"); then the share of records whose subject has another target among the
first T ("contested"), and Gen over the agreed (GenA) and the contested (GenC) records; and how
hard the edits were to fit: seconds per edit (the fits' median, and the whole runs' per edit, with
calibration, commits and any repairs), optimiser steps per edit and the share of edits that met the
stop rule before the last step.

With --repair-rounds N, each chunk is followed by `memoir repair --rounds N`, as a nightly refresh
with MEMOIR_REPAIR_ROUNDS does; the repair reads only the edits' own questions and targets.

One sequential run to the largest T passes through the smaller ones; the pack is copied at each T
and the copies are scored. Editing commits every --chunk facts and a rerun skips the facts already
in the pack, so an interrupted run resumes where it stopped:

    python benchmarks/zsre.py --t 10 100 1000 --methods memoir finetune
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import time
from importlib import metadata
from pathlib import Path

import torch

from memoir_cli.editor import PREFIX_LENGTHS, PREFIX_STARTS
from memoir_cli.facts import read_zsre_json
from memoir_cli.models import load_model
from memoir_cli.repair import repair_pack
from memoir_cli.session import Session
from memoir_cli.store import WriteOptions, load_pack
from memoir_cli.workflows import EditOptions, edit_pack, model_spec_for

# The ZsRE records: MEMOIR_ZSRE, else the workplace's shared folder beside the clone.
ZSRE = Path(os.environ.get("MEMOIR_ZSRE") or Path(__file__).resolve().parents[2] / "shared/data/zsre/zsre_dev.json")
FINETUNE_D_FF = 1536  # SmolLM2-135M's MLP width: k = d_ff means every column


SETTINGS: dict = {}  # given on the command line, for every method (finetune keeps its k, tau, rehearse and protect)


def method_options(method: str) -> EditOptions:
    if method == "memoir":
        return EditOptions(**SETTINGS)
    if method == "finetune":
        return EditOptions(**dict(SETTINGS, top_k=FINETUNE_D_FF, threshold=0.0, rehearse=0, protect=0.0))
    raise SystemExit(f"unknown method {method!r}")


def run_edits(
    method: str, facts, sizes: list[int], work: Path, chunk: int, repair_rounds: int = 0
) -> tuple[list[dict], list[dict]]:
    """Edit facts[:max(sizes)] into work/method/pack, snapshotting at each size; returns each edit's
    seconds, steps and whether it met the stop rule (None where a previous run committed it
    unrecorded), and each chunk's wall time, with its repair's when `repair_rounds` > 0: after each
    chunk, `memoir repair --rounds repair_rounds`, as a nightly refresh with MEMOIR_REPAIR_ROUNDS.
    The model is loaded once, not once per chunk (a GGUF file is dequantised at every load)."""
    folder = work / method
    folder.mkdir(parents=True, exist_ok=True)
    progress_file, older_file = folder / "edits.json", folder / "seconds.json"  # seconds.json: before steps
    chunks_file = folder / "chunks.json"
    edits: list[dict] = []
    if progress_file.exists():
        edits = json.loads(progress_file.read_text())
    elif older_file.exists():
        edits = [{"seconds": s, "steps": None, "converged": None} for s in json.loads(older_file.read_text())]
    run = json.loads(chunks_file.read_text()) if chunks_file.exists() else {"repair_rounds": 0, "chunks": []}
    if edits and run["repair_rounds"] != repair_rounds:  # one pack, one procedure
        raise SystemExit(f"{folder} was edited with --repair-rounds {run['repair_rounds']}, not {repair_rounds}")
    run["repair_rounds"] = repair_rounds
    pack = folder / "pack"
    loaded = None
    for size in sorted(sizes):
        while len(edits) < size:
            batch = facts[len(edits) : min(size, len(edits) + chunk)]
            loaded = loaded or load_model(model_spec_for(load_pack(pack)) if pack.exists() else None)
            summary = edit_pack(batch, pack, loaded, method_options(method))  # a resumed pack checks its fixed ones
            done = {"start": len(edits), "seconds": summary.seconds}
            if summary.plan.skipped:  # a previous run committed these facts but not their records
                edits.extend({"seconds": float("nan"), "steps": None, "converged": None} for _ in summary.plan.skipped)
            edits.extend({"seconds": r.seconds, "steps": r.steps, "converged": r.converged} for r in summary.results)
            line = f"[{method}] {len(edits)}/{max(sizes)} edits, last chunk {summary.seconds:.0f} s"
            if repair_rounds:
                repaired = repair_pack(pack, lambda _pack, model=loaded: model, WriteOptions("zsre.py"), repair_rounds)
                found = repaired.to_json()
                done["repair"] = {key: found[key] for key in ("seconds", "forgotten", "refitted", "still_forgotten")}
                line += (
                    f", repair {repaired.seconds:.0f} s: {len(repaired.forgotten)} forgotten, "
                    f"{len(repaired.refits)} refits, {len(repaired.still_forgotten)} still forgotten"
                )
            run["chunks"].append(dict(done, end=len(edits)))
            progress_file.write_text(json.dumps(edits))
            chunks_file.write_text(json.dumps(run))
            print(line, flush=True)
        snapshot = folder / f"T{size}"
        if not snapshot.exists():
            shutil.copytree(pack, snapshot)
    return edits, run["chunks"]


def _effort(edits: list[dict], chunks: list[dict]) -> dict:
    """Seconds per edit (mean, median), steps per edit and the share that met the stop rule, over
    the edits whose record exists; and over the chunks this folder recorded, the whole runs'
    seconds per edit (calibration, commits and repairs included) and what the repairs did."""
    timed = [e["seconds"] for e in edits if e["seconds"] == e["seconds"]]
    stepped = [e for e in edits if e["steps"] is not None]
    effort = {
        "seconds_per_edit": sum(timed) / len(timed) if timed else None,
        "median_seconds_per_edit": statistics.median(timed) if timed else None,
        "steps_per_edit": sum(e["steps"] for e in stepped) / len(stepped) if stepped else None,
        "stopped_share": sum(e["converged"] for e in stepped) / len(stepped) if stepped else None,
    }
    runs = [c for c in chunks if c["end"] <= len(edits)]
    if runs:
        repairs = [c["repair"] for c in runs if "repair" in c]
        wall = sum(c["seconds"] + c.get("repair", {}).get("seconds", 0.0) for c in runs)
        effort["wall_seconds_per_edit"] = wall / (runs[-1]["end"] - runs[0]["start"])
        effort["wall_edits"] = [runs[0]["start"], runs[-1]["end"]]  # the edits that figure covers
        if repairs:
            effort["repair_seconds"] = sum(r["seconds"] for r in repairs)
            effort["repair_forgotten"] = sum(len(r["forgotten"]) for r in repairs)
            effort["repair_refits"] = sum(len(r["refitted"]) for r in repairs)
    return effort


def score(method: str, size: int, facts, work: Path, baseline: bool) -> dict:
    cached = work / method / f"T{size}.eval.json"
    if cached.exists():
        result = json.loads(cached.read_text())
        if "baseline" in result or not baseline:  # one scored --no-baseline lacks the unedited rows
            return result
    started = time.perf_counter()
    session = Session([work / method / f"T{size}"])
    report = session.evaluate(
        facts[:size], baseline=baseline, check_generation=True, wild_contexts=["question", "chat"]
    )
    seconds = time.perf_counter() - started
    result = dict(report.to_json(), eval_seconds=seconds, same_route=_same_route(session, facts[:size]))
    cached.write_text(json.dumps(result, indent=2))
    return result


SYSTEM = "You are a concise assistant. Answer in one short sentence."
EARLIER_TURNS = [
    {"role": "user", "content": "How do bees make honey?"},
    {"role": "assistant", "content": "Bees make honey from the nectar of flowers."},
    {"role": "user", "content": "What is the boiling point of water at sea level?"},
    {"role": "assistant", "content": "100 degrees Celsius."},
]


def _same_route(session: Session, facts) -> dict:
    """Shares of questions that, asked with a system prompt after two earlier turns, reach the edit
    (or no edit) that the bare question reaches, and that the chat question alone reaches."""
    from memoir_cli.chat import Asking, chat_inputs, conversation

    questions = [f.prompt for f in facts]

    def routes(asking: Asking) -> list:
        return [a.edit_id for a in session.answer(questions, max_new_tokens=1, batch_size=16, asking=asking)]

    bare, chat = routes(Asking()), routes(Asking(chat=True))
    model, tokenizer = session.loaded.model, session.loaded.tokenizer
    crowded = []
    for start in range(0, len(questions), 16):
        chunk = [conversation(q, SYSTEM, EARLIER_TURNS) for q in questions[start : start + 16]]
        model.generate(**chat_inputs(tokenizer, chunk), max_new_tokens=1, do_sample=False)
        crowded.extend(r["edit_id"] for r in session.wrapper.describe_routes())
    return {
        "vs_bare": sum(a == b for a, b in zip(bare, crowded)) / len(questions),
        "vs_chat": sum(a == b for a, b in zip(chat, crowded)) / len(questions),
    }


def contested_records(facts) -> list[bool]:
    """Whether each record's subject has another target among these records.

    Many ZsRE records ask the same question about one subject with different targets (six on the
    architect of Lahti Town Hall, five answers). A rephrasing of one is as much a rephrasing of its
    siblings, and can be the very prompt a sibling was edited with, so its "right" answer is
    ambiguous; Gen is reported separately where the records agree.
    """
    targets: dict[str, set[str]] = {}
    for fact in facts:
        targets.setdefault(fact.subject, set()).add(fact.target.strip())
    return [len(targets[fact.subject]) > 1 for fact in facts]


def gen_ceilings(facts) -> dict:
    """The most Gen (share of rephrasings answered with their own target) that any model could
    score on these records while answering each edited prompt right, under two views of what a
    rephrasing means.

    - exact_text: one answer per rephrasing text (case and spacing aside), and a rephrasing that is
      another record's prompt gets that record's target;
    - one_answer_per_subject: one answer per subject, as a model that answers by meaning gives when
      a subject's records ask one question in other words with other targets (most contested
      subjects do: "What river does La Crosse Rail Bridge cross?" -> Ohio River, "Over what river
      does La Crosse Rail Bridge cross?" -> Crosse Creek, each the other's rephrasing).
    """

    def text(s: str) -> str:
        return " ".join(s.lower().split())

    prompt_targets: dict[str, set[str]] = {}
    asked: dict[str, list[str]] = {}
    by_subject: dict[str, list[str]] = {}
    for fact in facts:
        prompt_targets.setdefault(text(fact.prompt), set()).add(fact.target.strip())
        for rephrase in fact.rephrases:
            asked.setdefault(text(rephrase), []).append(fact.target.strip())
            by_subject.setdefault(fact.subject, []).append(fact.target.strip())

    def best(targets: list[str], forced: set[str] | None = None) -> int:
        """How many of `targets` one answer gets right (the answer forced when it is one record's)."""
        if forced is not None and len(forced) == 1:
            return targets.count(next(iter(forced)))
        return max(targets.count(t) for t in set(targets))

    rephrasings = sum(len(targets) for targets in asked.values())
    exact = sum(best(targets, prompt_targets.get(t)) for t, targets in asked.items())
    per_subject = sum(best(targets) for targets in by_subject.values())
    return {
        "exact_text": exact / rephrasings if rephrasings else None,
        "one_answer_per_subject": per_subject / rephrasings if rephrasings else None,
    }


def own_route_ceiling(facts) -> dict:
    """The most of these records' rephrasings that any router sending each subject's rephrasings
    to one edit could route to their own edit: all records, the agreed and the contested ones.

    Why: a router that routes by meaning sees a contested subject's records as one question ("What
    river does La Crosse Rail Bridge cross?" and "Over what river does La Crosse Rail Bridge
    cross?", each the other's rephrasing, two edits), so it can send their rephrasings to one of
    their edits only. Too strict, as gen_ceilings' per-subject view is, where a subject's records
    ask different questions.
    """
    contested = contested_records(facts)

    def ceiling(flag: bool | None) -> float | None:
        owners: dict[str, list[str]] = {}
        for fact, c in zip(facts, contested):
            if flag in (None, c):
                owners.setdefault(fact.subject, []).extend(fact.id for _ in fact.rephrases)
        rephrasings = sum(len(ids) for ids in owners.values())
        best = sum(max(ids.count(i) for i in set(ids)) for ids in owners.values() if ids)
        return best / rephrasings if rephrasings else None

    return {"all": ceiling(None), "agreed": ceiling(False), "contested": ceiling(True)}


def tf_gen_ceiling(facts, per_record: list[dict], one_answer_per_subject: float | None) -> dict:
    """An estimate of the most teacher-forced Gen a model giving each subject one answer could score
    here, and what it rests on.

    Teacher forcing gives credit per token, so a rephrasing answered with a sibling's target still
    earns the tokens the two targets share ("Wollondilly River" / "Brisbane River"): gen_ceilings'
    bound does not hold for it. How much such a rephrasing earns is measured on this run: the mean
    teacher-forced Gen of the contested records whose rephrasing was routed to a sibling's edit with
    another target (`sibling_credit`, with its count and a normal 95% interval). A rephrasing whose
    target is its subject's one answer scores 1 and every other `sibling_credit`, so the estimate is
    credit + (1 - credit) x the per-subject Gen ceiling. Optimistic: it assumes perfect routing and
    retention, full credit wherever the answer is right, and the credit measured at this T.
    """
    subject = {fact.id: fact.subject for fact in facts}
    target = {fact.id: fact.target.strip() for fact in facts}
    credits = [
        record["gen"]
        for fact, record in zip(facts, per_record)
        if len(record.get("gen_routes") or []) == 1
        and (edit := record["gen_routes"][0]["edit_id"]) in subject
        and subject[edit] == fact.subject
        and target[edit] != fact.target.strip()
    ]
    if not credits or one_answer_per_subject is None:
        return {"sibling_credit": None, "rephrasings": len(credits), "estimate": None}
    credit = statistics.fmean(credits)
    spread = 1.96 * statistics.stdev(credits) / len(credits) ** 0.5 if len(credits) > 1 else 0.0

    def estimate(c: float) -> float:
        return c + (1 - c) * one_answer_per_subject

    return {
        "sibling_credit": credit,
        "sibling_credit_interval": [credit - spread, credit + spread],
        "rephrasings": len(credits),
        "estimate": estimate(credit),
        "estimate_interval": [estimate(credit - spread), estimate(credit + spread)],
    }


def _gen_split(facts, per_record: list[dict]) -> dict:
    """Share of contested records; Gen over the agreed and the contested records, teacher-forced
    (gen_agreed, gen_contested) and WILD in each context (question_gen_agreed, chat_gen_contested,
    ...); and where their rephrasings are routed: to the record's own edit (own_agreed,
    own_contested), and to an edit about the same subject (same_subject, all records); and the
    ceilings the records themselves put on Gen (gen_ceilings) and on routing to the own edit
    (own_route_ceiling), and the estimated one on teacher-forced Gen (tf_gen_ceiling). A contested
    rephrasing that reaches a sibling's edit is routed as well as its words allow."""
    contested = contested_records(facts)
    subject = {fact.id: fact.subject for fact in facts}

    def mean(flag: bool | None, score) -> float | None:
        scores = [score(r) for c, r in zip(contested, per_record) if flag in (None, c) and score(r) is not None]
        return sum(scores) / len(scores) if scores else None

    def routed(record: dict, same_subject: bool) -> float | None:
        """The share of the record's rephrasings routed to its own edit, or to one on its subject."""
        routes = [route["edit_id"] for route in record.get("gen_routes") or []]
        if same_subject:
            hits = [subject.get(edit) == subject[record["id"]] for edit in routes]
        else:
            hits = [edit == record["id"] for edit in routes]
        return sum(hits) / len(hits) if hits else None

    split = {"contested_share": sum(contested) / len(contested)}
    for prefix, score in [("", lambda r: r["gen"])] + [
        (f"{context}_", lambda r, c=context: r.get("wild", {}).get(c, {}).get("gen"))
        for context in ("question", "chat")
    ]:
        split[f"{prefix}gen_agreed"], split[f"{prefix}gen_contested"] = mean(False, score), mean(True, score)
    split["own_agreed"], split["own_contested"] = (mean(flag, lambda r: routed(r, False)) for flag in (False, True))
    split["same_subject"] = mean(None, lambda r: routed(r, True))
    split["gen_ceiling"] = gen_ceilings(facts)
    split["own_route_ceiling"] = own_route_ceiling(facts)
    split["tf_gen_ceiling"] = tf_gen_ceiling(facts, per_record, split["gen_ceiling"]["one_answer_per_subject"])
    return split


def _by_context(wild: dict[str, dict]) -> dict:
    """WILD scores per context as flat row columns: {"question": {"rel": x}} -> {"question_rel": x}."""
    return {f"{context}_{key}": value for context, scores in wild.items() for key, value in scores.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--t", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--methods", nargs="+", default=["memoir", "finetune"])
    parser.add_argument("--work", type=Path, default=Path("benchmarks/work/zsre"))
    parser.add_argument("--chunk", type=int, default=25)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/zsre.json"))
    parser.add_argument("--layer", type=int, help="edited layer of a new pack (default: the editor's default)")
    parser.add_argument("--top-k", type=int, help="mask size k of a new pack (default: the editor's default)")
    parser.add_argument("--threshold", type=float, help="routing threshold tau (default: the editor's default)")
    parser.add_argument("--seed", type=int, help="TopHash permutation and training prefixes of a new pack (default: 0)")
    parser.add_argument("--steps", type=int, help="steps per fact (default: the editor's default)")
    parser.add_argument("--lr", type=float, help="learning rate (default: the editor's default for the model)")
    parser.add_argument("--prefixed", type=int, help="prefixed copies per fact (default: the editor's default)")
    parser.add_argument("--rehearse", type=int, help="rehearsed neighbours (default: the editor's default)")
    parser.add_argument("--rehearse-overlap", type=float, help="minimum overlap of a rehearsed edit (default: tau)")
    parser.add_argument("--protect", type=float, help="damping along earlier edits' directions (default: the editor's)")
    parser.add_argument(
        "--rehearse-chat",
        action=argparse.BooleanOptionalAction,
        help="rehearse earlier edits' chat questions too (default: the editor's)",
    )
    parser.add_argument("--chat", choices=["auto", "on", "off"], help="train the chat form too (default: auto)")
    parser.add_argument(
        "--optimizer", choices=["adam", "sgd"], help="with its learning rate and stop rule (default: the editor's)"
    )
    parser.add_argument(
        "--mixed-precision", choices=["auto", "no", "bf16"], help="training passes in bf16 (default: auto)"
    )
    parser.add_argument(
        "--repair-rounds",
        type=int,
        default=0,
        help="after each chunk, repair forgotten edits with this many rounds, as a nightly refresh (default: none)",
    )
    parser.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="score the unedited model beside the first method (default: yes; its scores do not depend on the edits)",
    )
    args = parser.parse_args()
    if args.repair_rounds < 0:
        parser.error("--repair-rounds must be 0 or more")
    keys = ("layer", "top_k", "threshold", "seed", "steps", "lr", "prefixed", "rehearse", "rehearse_overlap", "protect")
    SETTINGS.update({k: getattr(args, k) for k in keys if getattr(args, k) is not None})
    numeric = dict(SETTINGS)
    if args.chat:
        SETTINGS["chat"] = args.chat
    if args.mixed_precision:
        SETTINGS["mixed_precision"] = args.mixed_precision
    if args.optimizer:
        SETTINGS["optimizer"] = args.optimizer
    if args.rehearse_chat is not None:
        SETTINGS["rehearse_chat"] = args.rehearse_chat
    ranges = {
        "layer": (0, None),
        "top_k": (1, None),
        "threshold": (0, 1),
        "seed": (0, None),
        "steps": (1, None),
        "lr": (1e-12, None),
        "prefixed": (0, len(PREFIX_STARTS) * len(PREFIX_LENGTHS)),  # the prefixes a new pack writes
        "rehearse": (0, None),
        "rehearse_overlap": (0, 1),
        "protect": (0, None),
    }
    for key, value in numeric.items():  # refuse a bad setting before any folder is made or model loaded
        low, high = ranges[key]
        if value < low or (high is not None and value > high):
            parser.error(f"--{key.replace('_', '-')} {value} is out of range")

    skipped = []
    facts = read_zsre_json(ZSRE, on_skip=skipped.append, limit=2 * max(args.t))[: max(args.t)]
    if len(facts) < max(args.t):  # the file's 1000 records hold 998 usable ones: T = 1000 means all of them
        print(f"{ZSRE} has {len(facts)} usable records: T is capped at {len(facts)}", flush=True)
        args.t = sorted({min(size, len(facts)) for size in args.t})
    rows = []
    for method in args.methods:
        edits, chunks = run_edits(method, facts, args.t, args.work, args.chunk, args.repair_rounds)
        for size in sorted(args.t):
            result = score(method, size, facts, args.work, baseline=args.baseline and method == args.methods[0])
            generated = {f"generated_{key}": value for key, value in result["generate"].items()}
            row = {
                "T": size,
                "method": method,
                **result["scores"],
                **generated,
                **_by_context(result["wild"]),
                "same_route": result["same_route"],
                "routing": result["routing"],
                **_gen_split(facts[:size], result["per_record"]),
                **_effort(edits[:size], chunks),
            }
            rows.append(row)
            if "baseline" in result:
                unedited = dict(result["baseline"], **_by_context(result.get("wild_baseline", {})))
                rows.append({"T": size, "method": "unedited", **unedited, "seconds_per_edit": None})
    groups = {
        "teacher-forced": ("rel", "gen", "loc", "avg"),
        "generated": ("generated_rel", "generated_gen", "generated_loc"),
        "WILD question": ("question_rel", "question_gen", "question_loc", "question_repetition"),
        "WILD chat": ("chat_rel", "chat_gen", "chat_loc", "chat_repetition"),
        "contested": ("gen_agreed", "gen_contested", "contested_share"),
        "WILD GenA / GenC": ("question_gen_agreed", "question_gen_contested", "chat_gen_agreed", "chat_gen_contested"),
        "rephrase ->": ("own_agreed", "own_contested", "same_subject"),
    }
    names = {
        "avg": "Avg",
        "gen_agreed": "GenA",
        "gen_contested": "GenC",
        "contested_share": "cont.",
        "question_gen_agreed": "qA",
        "question_gen_contested": "qC",
        "chat_gen_agreed": "cA",
        "chat_gen_contested": "cC",
        "own_agreed": "ownA",
        "own_contested": "ownC",
        "same_subject": "subj",
    }
    header = " | ".join(f"{title:^{6 * len(keys) - 1}}" for title, keys in groups.items())
    print(f"\n{'':>15} | {header} | {'route':>5} | {'s/edit':>6} | {'s/edit':>6} | {'steps':>5} | {'stop':>5}")
    labels = " | ".join(
        " ".join(f"{names.get(k, k.rsplit('_', 1)[-1][:5].capitalize()):>5}" for k in keys) for keys in groups.values()
    )
    print(f"{'T':>5} {'method':>9} | {labels} | {'same':>5} | {'median':>6} | {'wall':>6} | {'mean':>5} | {'share':>5}")
    for row in sorted(rows, key=lambda r: (r["T"], r["method"])):
        cells = " | ".join(
            " ".join(f"{row[k]:>5.2f}" if row.get(k) is not None else f"{'-':>5}" for k in keys)
            for keys in groups.values()
        )
        same = row.get("same_route", {}).get("vs_bare")
        effort = ("median_seconds_per_edit", "wall_seconds_per_edit", "steps_per_edit", "stopped_share")
        median_cell, wall_cell, steps_cell, stop_cell = ("-" if row.get(k) is None else f"{row[k]:.2f}" for k in effort)
        same_cell = "-" if same is None else f"{same:.2f}"
        effort_cells = f"{median_cell:>6} | {wall_cell:>6} | {steps_cell:>5} | {stop_cell:>5}"
        print(f"{row['T']:>5} {row['method']:>9} | {cells} | {same_cell:>5} | {effort_cells}")
    for size, ceiling in sorted({row["T"]: row["gen_ceiling"] for row in rows if "gen_ceiling" in row}.items()):
        print(
            f"T = {size}: Gen can reach at most {ceiling['exact_text']:.3f} (one answer per rephrasing text), "
            f"{ceiling['one_answer_per_subject']:.3f} (one answer per subject)"
        )
    for size, route in sorted(
        {row["T"]: row["own_route_ceiling"] for row in rows if "own_route_ceiling" in row}.items()
    ):
        shares = ", ".join(f"{group} {value:.3f}" for group, value in route.items() if value is not None)
        print(f"T = {size}: rephrasings can reach their own edit at most ({shares}) with one route per subject")
    for row in rows:
        tf = row.get("tf_gen_ceiling") or {}
        if tf.get("estimate") is not None:
            low, high = tf["estimate_interval"]
            print(
                f"T = {row['T']} {row['method']}: teacher-forced Gen with one answer per subject, estimated: at most "
                f"{tf['estimate']:.3f} ({low:.3f}-{high:.3f}; a sibling's answer earned {tf['sibling_credit']:.3f} "
                f"per token over {tf['rephrasings']} rephrasings)"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "zsre",
                "date": time.strftime("%Y-%m-%d"),
                "settings": SETTINGS,
                "repair_rounds": args.repair_rounds,
                "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
                "versions": {
                    name: metadata.version(name) for name in ("torch", "transformers", "huggingface-hub", "memoir-cli")
                },
                "data": str(ZSRE),
                "skipped_records": skipped,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
