"""Seconds per edit on SmolLM2-135M, in one run, on the same facts, each from the same pack (an
empty one, or a copy of `--start`, whose edits are rehearsed and protected as a grown pack's are):

- straightforward: the paper's settings (SGD, 30 steps), the whole model forward and backward at
  every step (Editor fast=False), as the research code does;
- replay, paper's optimiser: the same settings, the lower layers run once per fact and the upper
  blocks replayed each step (the defaults until Adam);
- replay, the defaults before mixed precision: the new defaults with every pass in float32, no
  protection, every prefix and 8 rehearsed edits;
- replay, the defaults before fewer rows: the new defaults with every prefix and 8 rehearsed edits;
- replay, new defaults (TrainingConfig, "a new pack" on this machine);
- each `--variant name=field:value,...`: the new defaults with those training settings changed;
- the new defaults fitting `--batch-size` facts per optimisation (editor.edit_batch), when asked.

    python benchmarks/edit_speed.py --facts 10 [--variant fp32=mixed_precision:no] [--batch-size 4] \
        [--start PACK] [--no-baselines] [--out benchmarks/results/edit_speed.json]

From `--start`, the timed facts are the ZsRE records after the pack's own, and the protection
matrix over its edits is summed before the clock starts (a run finds it in the pack's cache).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch
from _environment import environment
from _variants import parse_variant
from zsre import ZSRE

from memoir_cli.config import TrainingConfig, default_lr
from memoir_cli.editor import editing
from memoir_cli.facts import read_zsre_json
from memoir_cli.models import load_model
from memoir_cli.store import load_pack
from memoir_cli.workflows import EditOptions, create_pack, model_spec_for


def run(loaded, base, facts, training: TrainingConfig, fast: bool, batch_size: int = 1) -> tuple[dict, torch.Tensor]:
    """Edit `facts` into a copy of the pack `base` with `training`: seconds per edit and what the
    fits reached, and the memory's weight."""
    pack = copy.deepcopy(base)
    pack.manifest.training = training
    results = []
    with editing(loaded, pack, fast=fast) as editor:
        editor.protection()
        started = time.perf_counter()
        for start in range(0, len(facts), batch_size):
            results += editor.edit_batch(facts[start : start + batch_size])
    wall = time.perf_counter() - started
    seconds = [r.seconds for r in results]
    return {
        "seconds_per_edit": wall / len(facts),
        "median_seconds_per_edit": statistics.median(seconds),
        "steps": statistics.mean(r.steps for r in results),
        "converged": sum(r.converged for r in results),
        "mean_final_loss": statistics.mean(r.loss for r in results),
        "max_final_loss": max(r.loss for r in results),
    }, pack.memory.weight


STRAIGHTFORWARD = "straightforward (paper's SGD, full model each step)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=0, help="also the new defaults in batches of N")
    parser.add_argument("--model", default=None)
    parser.add_argument("--variant", action="append", default=[], help="name=field:value,... (repeatable)")
    parser.add_argument(
        "--start", help="time the edits after this pack's, PACK@N for a version (default: from an empty pack)"
    )
    parser.add_argument(
        "--baselines",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the paper's procedures and the defaults before mixed precision (the speed-up's "
        "reference); --no-baselines times the new defaults and the variants only, against the new defaults",
    )
    parser.add_argument("--out", default="benchmarks/results/edit_speed.json")
    args = parser.parse_args()

    loaded = load_model(args.model or (model_spec_for(load_pack(args.start)) if args.start else None))
    empty = create_pack(loaded, EditOptions())
    start = load_pack(args.start) if args.start else empty
    records = read_zsre_json(ZSRE, on_skip=lambda problem: None)
    if [f.id for f in start.facts] != [r.id for r in records[: len(start.facts)]]:
        raise SystemExit(f"{args.start}: its facts are not the first ZsRE records, in order")
    facts = records[len(start.facts) : len(start.facts) + args.facts]
    if not facts:
        raise SystemExit(f"{args.start}: it holds all {len(records)} usable ZsRE records; none is left to time")
    new = empty.manifest.training
    paper = TrainingConfig(
        lr=default_lr(empty.memory.bank.d_ff),
        end_answer=new.end_answer,
        chat=new.chat,
        rehearse_chat=new.rehearse_chat,
    )
    every_row = {"prefixed": None, "rehearse": TrainingConfig().rehearse}  # the batch before config.PREFIXED
    new_defaults = "replay, new defaults"
    procedures = {new_defaults: (new, True, 1)}
    if args.baselines:
        procedures = {
            STRAIGHTFORWARD: (paper, False, 1),
            "replay, paper's SGD (the old defaults)": (paper, True, 1),
            "replay, the defaults before mixed precision": (
                dataclasses.replace(new, mixed_precision="no", protect=0.0, **every_row),
                True,
                1,
            ),
            "replay, the defaults before fewer rows (every prefix, rehearse 8)": (
                dataclasses.replace(new, **every_row),
                True,
                1,
            ),
            **procedures,
        }
    for name, overrides in map(parse_variant, args.variant):
        procedures[f"replay, new defaults, {name}"] = (dataclasses.replace(new, **overrides), True, 1)
    if args.batch_size > 1:
        procedures[f"replay, new defaults, --batch-size {args.batch_size}"] = (new, True, args.batch_size)
    rows, weights = {}, {}
    for name, (training, fast, batch_size) in procedures.items():
        rows[name], weights[name] = run(loaded, start, facts, training, fast, batch_size)
        print(f"  {name}: {rows[name]['seconds_per_edit']:.2f} s/edit", flush=True)
    reference = rows[STRAIGHTFORWARD if args.baselines else new_defaults]["seconds_per_edit"]
    print(f"\n{'procedure':58} {'s/edit':>7} {'median':>7} {'speed-up':>8} {'steps':>6} {'stopped':>7} {'loss':>7}")
    for name, row in rows.items():
        row["speedup"] = reference / row["seconds_per_edit"]
        print(
            f"{name:58} {row['seconds_per_edit']:7.2f} {row['median_seconds_per_edit']:7.2f} "
            f"{row['speedup']:7.2f}x {row['steps']:6.1f} {row['converged']:>4}/{len(facts):<2} "
            f"{row['mean_final_loss']:7.4f}"
        )
    difference = None
    if args.baselines:
        straightforward, replayed = list(weights.values())[:2]
        difference = (straightforward - replayed).abs().max().item()  # same settings: float summation order only
        print(f"max |W_m(straightforward) - W_m(replay)| under the same settings: {difference:.2e}")
    report = {
        "benchmark": "edit_speed",
        **environment(),
        "model": loaded.model_id,
        "facts": len(facts),
        "start": {"pack": str(args.start), "edits": len(start.facts)} if args.start else None,
        "paper_lr": paper.lr,
        "new_defaults": vars(new),
        "layer": empty.manifest.layer.path,
        "k": empty.manifest.tophash.k,
        "speedup_reference": STRAIGHTFORWARD if args.baselines else new_defaults,
        "procedures": rows,
        "max_weight_difference_straightforward_vs_replay": difference,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
