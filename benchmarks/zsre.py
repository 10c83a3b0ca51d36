"""The paper's ZsRE protocol on SmolLM2-135M: edit the first T records sequentially into one pack,
then score all T (teacher-forced Rel / Gen / Loc, MEMOIR.md), for T = 10, 100, 1000.

Contrasts, run the same way: the unedited model, and plain fine-tuning of the same
down-projection (same optimiser and steps; every column trained, always applied, no rehearsal:
k = d_ff and threshold 0).

Next to the paper's teacher-forced columns: the same three scores from greedy generation, as a user
sees them (`memoir eval --generate`: the answer must start with the target; a locality answer must
equal the base model's), then the share of records whose subject has another target among the
first T ("contested"), and Gen over the agreed (GenA) and the contested (GenC) records.

One sequential run to the largest T passes through the smaller ones; the pack is copied at each T
and the copies are scored. Editing commits every --chunk facts and a rerun skips the facts already
in the pack, so an interrupted run resumes where it stopped:

    python benchmarks/zsre.py --t 10 100 1000 --methods memoir finetune
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import time
from importlib import metadata
from pathlib import Path

import torch

from memoir_cli.facts import read_zsre_json
from memoir_cli.session import Session
from memoir_cli.workflows import EditOptions, edit_pack

ZSRE = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "zsre" / "zsre_dev.json"
FINETUNE_D_FF = 1536  # SmolLM2-135M's MLP width: k = d_ff means every column


SETTINGS: dict = {}  # settings given on the command line, applied to every method (finetune keeps its k and tau)


def method_options(method: str) -> EditOptions:
    if method == "memoir":
        return EditOptions(**SETTINGS)
    if method == "finetune":
        return EditOptions(**dict(SETTINGS, top_k=FINETUNE_D_FF, threshold=0.0, rehearse=0))
    raise SystemExit(f"unknown method {method!r}")


def run_edits(method: str, facts, sizes: list[int], work: Path, chunk: int) -> list[float]:
    """Edit facts[:max(sizes)] into work/method/pack, snapshotting at each size; returns seconds per edit."""
    folder = work / method
    folder.mkdir(parents=True, exist_ok=True)
    progress_file = folder / "seconds.json"
    seconds: list[float] = json.loads(progress_file.read_text()) if progress_file.exists() else []
    pack = folder / "pack"
    for size in sorted(sizes):
        while len(seconds) < size:
            batch = facts[len(seconds) : min(size, len(seconds) + chunk)]
            summary = edit_pack(
                batch, pack, None, method_options(method) if not pack.exists() else _resume_options(method)
            )
            if summary.plan.skipped:  # a previous run committed these facts but not their timings
                seconds.extend([float("nan")] * len(summary.plan.skipped))
            seconds.extend(r.seconds for r in summary.results)
            progress_file.write_text(json.dumps(seconds))
            print(f"[{method}] {len(seconds)}/{max(sizes)} edits, last chunk {summary.seconds:.0f} s", flush=True)
        snapshot = folder / f"T{size}"
        if not snapshot.exists():
            shutil.copytree(pack, snapshot)
    return seconds


def _resume_options(method: str) -> EditOptions:
    """An existing pack keeps its own layer, k and seed; only routing/training settings may be passed."""
    options = method_options(method)
    return EditOptions(
        threshold=options.threshold,
        rehearse=options.rehearse,
        steps=options.steps,
        lr=options.lr,
        rehearse_overlap=options.rehearse_overlap,
    )


def score(method: str, size: int, facts, work: Path, baseline: bool) -> dict:
    cached = work / method / f"T{size}.eval.json"
    if cached.exists():
        return json.loads(cached.read_text())
    started = time.perf_counter()
    report = Session([work / method / f"T{size}"]).evaluate(facts[:size], baseline=baseline, check_generation=True)
    result = dict(report.to_json(), eval_seconds=time.perf_counter() - started)
    cached.write_text(json.dumps(result, indent=2))
    return result


def _contested(facts) -> list[bool]:
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


def _gen_split(facts, per_record: list[dict]) -> dict:
    """Share of contested records, and Gen over the agreed and the contested records."""
    contested = _contested(facts)

    def mean(flag: bool) -> float | None:
        scores = [r["gen"] for c, r in zip(contested, per_record) if c == flag and r["gen"] is not None]
        return sum(scores) / len(scores) if scores else None

    return {"contested_share": sum(contested) / len(contested), "gen_agreed": mean(False), "gen_contested": mean(True)}


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
    parser.add_argument("--steps", type=int, help="steps per fact (default: the editor's default)")
    parser.add_argument("--lr", type=float, help="learning rate (default: the editor's default for the model)")
    parser.add_argument("--rehearse", type=int, help="rehearsed neighbours (default: the editor's default)")
    parser.add_argument("--rehearse-overlap", type=float, help="minimum overlap of a rehearsed edit (default: tau)")
    args = parser.parse_args()
    keys = ("layer", "top_k", "threshold", "steps", "lr", "rehearse", "rehearse_overlap")
    SETTINGS.update({k: getattr(args, k) for k in keys if getattr(args, k) is not None})
    ranges = {
        "layer": (0, None),
        "top_k": (1, None),
        "threshold": (0, 1),
        "steps": (1, None),
        "lr": (1e-12, None),
        "rehearse": (0, None),
        "rehearse_overlap": (0, 1),
    }
    for key, value in SETTINGS.items():  # refuse a bad setting before any folder is made or model loaded
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
        seconds = run_edits(method, facts, args.t, args.work, args.chunk)
        for size in sorted(args.t):
            result = score(method, size, facts, args.work, baseline=(method == args.methods[0]))
            timed = [s for s in seconds[:size] if s == s]
            generated = {f"generated_{key}": value for key, value in result["generate"].items()}
            row = {
                "T": size,
                "method": method,
                **result["scores"],
                **generated,
                "routing": result["routing"],
                **_gen_split(facts[:size], result["per_record"]),
                "seconds_per_edit": sum(timed) / len(timed) if timed else None,
                "median_seconds_per_edit": statistics.median(timed) if timed else None,
            }
            rows.append(row)
            if "baseline" in result:
                rows.append({"T": size, "method": "unedited", **result["baseline"], "seconds_per_edit": None})
    print(f"\n{'':>15} | {'teacher-forced':^23} | {'generated':^17} |")
    print(
        f"{'T':>5} {'method':>9} | {'Rel':>5} {'Gen':>5} {'Loc':>5} {'Avg':>5} | {'Rel':>5} {'Gen':>5} {'Loc':>5} | "
        f"{'GenA':>5} {'GenC':>5} {'cont.':>5} | {'s/edit':>6} {'median':>6}"
    )
    for row in sorted(rows, key=lambda r: (r["T"], r["method"])):
        keys = (
            "rel",
            "gen",
            "loc",
            "avg",
            "generated_rel",
            "generated_gen",
            "generated_loc",
            "gen_agreed",
            "gen_contested",
            "contested_share",
        )
        cells = [f"{row[k]:.2f}" if row.get(k) is not None else "  -  " for k in keys]
        per_edit = " ".join(
            f"{row[k]:>6.2f}" if row.get(k) else f"{'-':>6}" for k in ("seconds_per_edit", "median_seconds_per_edit")
        )
        print(
            f"{row['T']:>5} {row['method']:>9} | {' '.join(f'{c:>5}' for c in cells[:4])} | "
            f"{' '.join(f'{c:>5}' for c in cells[4:7])} | {' '.join(f'{c:>5}' for c in cells[7:])} | {per_edit}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "zsre",
                "date": time.strftime("%Y-%m-%d"),
                "settings": SETTINGS,
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
