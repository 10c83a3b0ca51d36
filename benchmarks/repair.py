"""`memoir repair` on a grown ZsRE pack: how many edits it finds forgotten, what refitting them
costs, and the ZsRE scores before and after (teacher-forced and WILD, in both contexts, with
reliability by the edit's age).

Why: at T = 998 an edit 300 edits old answers its own question right only 0.66-0.71 of the time
(WILD; docs/BENCHMARKS.md). A repair refits the edits whose own question lost its answer; it reads
only the edits' own prompts and targets, never a rephrasing or a locality prompt.

    python benchmarks/repair.py --pack benchmarks/work/zsre/memoir/pack --rounds 2

The pack is copied twice into --work ("before" and "after"); only the copy "after" is repaired.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from _environment import environment

from memoir_cli.facts import read_zsre_json
from memoir_cli.models import load_model
from memoir_cli.repair import repair_pack
from memoir_cli.session import Session
from memoir_cli.store import WriteOptions, load_pack
from memoir_cli.workflows import model_spec_for

ZSRE = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "zsre" / "zsre_dev.json"
CONTEXTS = ("question", "chat")
AGE_BUCKET = 100


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=Path, required=True, help="a pack of ZsRE records edited in order")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("benchmarks/work/repair"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/repair.json"))
    args = parser.parse_args()

    edited = load_pack(args.pack)
    ids = [f.id for f in edited.facts]
    records = {f.id: f for f in read_zsre_json(ZSRE, on_skip=lambda _problem: None, limit=2 * len(ids) + 10)}
    facts = [records[i] for i in ids]  # the pack's facts with their rephrasings and locality prompts
    copies = {name: args.work / name for name in ("before", "after")}
    for copy in copies.values():
        if copy.exists():
            shutil.rmtree(copy)
        shutil.copytree(args.pack, copy)

    loaded = load_model(model_spec_for(edited))
    started = time.perf_counter()
    report = repair_pack(copies["after"], lambda _pack: loaded, WriteOptions("benchmarks/repair.py"), args.rounds)
    repair = dict(report.to_json(), seconds=time.perf_counter() - started)
    print(
        f"repair: {len(report.forgotten)} of {report.checked} forgotten, {len(report.refits)} refits in "
        f"{report.rounds} round(s), {len(report.still_forgotten)} still forgotten, {repair['seconds']:.0f} s",
        flush=True,
    )

    rows = {name: scores(copy, facts) for name, copy in copies.items()}
    columns = ["rel", "gen", "loc", "question_rel", "question_gen", "question_loc", "chat_rel", "chat_gen", "chat_loc"]
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
                "edits": len(facts),
                "repair": repair,
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
