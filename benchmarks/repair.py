"""`memoir repair` on a grown ZsRE pack: how many edits it finds forgotten, what refitting them
costs, per training setting, and the ZsRE scores before and after (teacher-forced and WILD, in
both contexts, with reliability by the edit's age).

Why: at T = 998 an edit 300 edits old answers its own question right only 0.66-0.71 of the time
(WILD; docs/BENCHMARKS.md). A repair refits the edits whose own question lost its answer; it reads
only the edits' own prompts and targets, never a rephrasing or a locality prompt. A nightly repair
of a pack of 800 edits left more forgotten each night: a variant measures a setting that might
break fewer edits while refitting (e.g. stronger protection).

    python benchmarks/repair.py --pack benchmarks/work/zsre/memoir/pack --rounds 2
    python benchmarks/repair.py --pack PACK --no-score --variant "pack settings" --variant "protect 4=protect:4"

The pack is copied into --work once per variant ("before" too, when scored); only the variants'
copies are repaired. A variant's settings are stored in its copy first, as `memoir edit` with the
flag and no facts stores them for a user, as a version of their own; the repair then refits with
them. With --no-score the repair's own exact check is the measure (forgotten before, still
forgotten after) and the ZsRE scoring, tens of minutes on a big pack, is left out.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from _environment import environment
from _variants import parse_variant
from zsre import ZSRE

from memoir_cli.errors import MemoirError
from memoir_cli.facts import read_zsre_json
from memoir_cli.models import LoadedModel, load_model
from memoir_cli.repair import repair_pack
from memoir_cli.session import Session
from memoir_cli.store import WriteOptions, load_pack
from memoir_cli.workflows import TRAINING_AS_GIVEN, EditOptions, edit_pack, model_spec_for

CONTEXTS = ("question", "chat")
AGE_BUCKET = 100
WRITE = WriteOptions("benchmarks/repair.py")
# The training settings a variant may set: those `memoir edit` stores from a TrainingConfig value
# (`chat` is not one: edit takes on/off/auto there, and auto would keep the pack's without a word).
STORED_BY_EDIT = {*TRAINING_AS_GIVEN, "optimizer", "mixed_precision"}


def scores(pack: Path, facts) -> dict:
    """The ZsRE protocol's scores of `pack` on `facts`, and each record's reliabilities."""
    report = Session([pack]).evaluate(facts, wild_contexts=list(CONTEXTS)).to_json()
    row = dict(report["scores"])
    for context in CONTEXTS:
        row.update({f"{context}_{key}": value for key, value in report["wild"][context].items()})
    row["routing"] = report["routing"]
    row["per_record"] = [
        {"id": r["id"], "rel": r["rel"], **{c: r["wild"][c]["rel"] for c in CONTEXTS}} for r in report["per_record"]
    ]
    return row


def by_age(records: list[dict], key: str) -> list[float]:
    """Mean of `key` over each AGE_BUCKET records, oldest first."""
    buckets = [records[i : i + AGE_BUCKET] for i in range(0, len(records), AGE_BUCKET)]
    return [sum(float(r[key]) for r in bucket) / len(bucket) for bucket in buckets]


def fresh_copy(pack: Path, copy: Path) -> Path:
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(pack, copy)
    return copy


def store_settings(copy: Path, loaded: LoadedModel, overrides: dict) -> None:
    """Store a variant's training settings in its copy through `memoir edit`'s own path."""
    if overrides:
        edit_pack([], copy, loaded, EditOptions(**overrides), write=WRITE)


def repaired(copy: Path, loaded: LoadedModel, rounds: int) -> dict:
    """Repair `copy` in place; the report as JSON (its seconds are the repair's own)."""
    report = repair_pack(copy, lambda _pack: loaded, WRITE, rounds)
    repair = report.to_json()
    repair["refit_steps"] = sum(r.steps for r in report.refits)
    print(
        f"  {len(report.forgotten)} of {report.checked} forgotten, {len(report.refits)} refits "
        f"({repair['refit_steps']} steps) in {report.rounds} round(s), {len(report.still_forgotten)} still "
        f"forgotten, {repair['seconds']:.0f} s",
        flush=True,
    )
    return repair


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=Path, required=True, help="a pack of ZsRE records edited in order")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="name=field:value,... settings to repair with (repeatable; default: the pack's own)",
    )
    parser.add_argument(
        "--score", action=argparse.BooleanOptionalAction, default=True, help="score before and after with ZsRE"
    )
    parser.add_argument("--work", type=Path, default=Path("benchmarks/work/repair"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/repair.json"))
    args = parser.parse_args()
    variants = [parse_variant(v) for v in args.variant or ["after"]]
    if len({name for name, _ in variants} | {"before"}) != len(variants) + 1:
        parser.error("each --variant needs its own name, and none may be called 'before'")
    for name, overrides in variants:  # checked before the model loads and any copy is made
        unknown = sorted(set(overrides) - STORED_BY_EDIT)
        if unknown:
            parser.error(f"variant {name!r}: memoir edit cannot set {', '.join(unknown)}")

    try:
        edited = load_pack(args.pack)
    except MemoirError as error:
        parser.error(str(error))
    loaded = load_model(model_spec_for(edited))
    repairs = {}
    for name, overrides in variants:
        print(f"[{name}] {overrides or 'the pack settings'}", flush=True)
        copy = fresh_copy(args.pack, args.work / name)
        store_settings(copy, loaded, overrides)
        repairs[name] = repaired(copy, loaded, args.rounds) | {"overrides": overrides}

    print(f"\n{edited.memory.bank.active.sum().item()} active edits in {args.pack}, {args.rounds} round(s)")
    print("| variant | forgotten | refits | refit steps | still forgotten | seconds |")
    print("|---|---|---|---|---|---|")
    for name, r in repairs.items():
        print(
            f"| {name} | {len(r['forgotten'])} | {len(r['refitted'])} | {r['refit_steps']} "
            f"| {len(r['still_forgotten'])} | {r['seconds']:.0f} |"
        )
    rows = {}
    if args.score:
        ids = [f.id for f in edited.facts]
        records = {f.id: f for f in read_zsre_json(ZSRE, on_skip=lambda _problem: None, limit=2 * len(ids) + 10)}
        facts = [records[i] for i in ids]  # the pack's facts with their rephrasings and locality prompts
        copies = {"before": fresh_copy(args.pack, args.work / "before")} | {n: args.work / n for n in repairs}
        rows = {name: scores(copy, facts) for name, copy in copies.items()}
        columns = ["rel", "gen", "loc", "question_rel", "question_gen", "question_loc", "chat_rel", "chat_gen"]
        columns.append("chat_loc")
        print(f"\nT = {len(facts)} | " + " ".join(f"{c:>12}" for c in columns))
        for name, row in rows.items():
            print(f"{name:>9} | " + " ".join(f"{row[c]:>12.3f}" for c in columns))
        print(f"\nreliability by age, per {AGE_BUCKET} edits, oldest first")
        for name, row in rows.items():
            for key in ("rel", *CONTEXTS):
                print(f"{name:>9} {key:>9} | " + " ".join(f"{v:.2f}" for v in by_age(row["per_record"], key)))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "repair",
                **environment(),
                "pack": str(args.pack),
                "edits": len(edited.facts),
                "rounds": args.rounds,
                "repairs": repairs,
                "rows": {
                    name: {k: v for k, v in row.items() if k != "per_record"}
                    | {f"{key}_by_age": by_age(row["per_record"], key) for key in ("rel", *CONTEXTS)}
                    for name, row in rows.items()
                },
            },
            indent=2,
        )
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
