"""Seconds per edit on SmolLM2-135M: our editor (frozen lower layers replayed once per fact) against
the straightforward procedure (full forward and backward through the whole model at every step),
in the same run, on the same facts, from the same empty pack.

    python benchmarks/edit_speed.py --facts 5 [--steps 30] [--out benchmarks/results/edit_speed.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import torch

from memoir_cli.editor import editing
from memoir_cli.facts import read_zsre_json
from memoir_cli.models import load_model
from memoir_cli.workflows import EditOptions, create_pack

ZSRE = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "zsre" / "zsre_dev.json"


def run(editor_fast: bool, loaded, empty, facts, steps):
    pack = copy.deepcopy(empty)
    pack.manifest.training.steps = steps
    with editing(loaded, pack, fast=editor_fast) as editor:
        results = [editor.edit(fact) for fact in facts]
    return results, pack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None, help="steps per fact (default: the editor's default)")
    parser.add_argument("--model", default=None)
    parser.add_argument("--out", default="benchmarks/results/edit_speed.json")
    args = parser.parse_args()

    loaded = load_model(args.model)
    facts = read_zsre_json(ZSRE, on_skip=lambda problem: None)[: args.facts]
    empty = create_pack(loaded, EditOptions())
    steps = args.steps or empty.manifest.training.steps
    rows = {}
    for name, fast in (("memoir (replay upper layers)", True), ("full model every step", False)):
        results, pack = run(fast, loaded, empty, facts, steps)
        rows[name] = {
            "seconds_per_edit": sum(r.seconds for r in results) / len(results),
            "mean_final_loss": sum(r.loss for r in results) / len(results),
            "steps": sum(r.steps for r in results) / len(results),
            "weight": pack.memory.weight,
        }
    ours, full = rows["memoir (replay upper layers)"], rows["full model every step"]
    max_diff = (ours.pop("weight") - full.pop("weight")).abs().max().item()
    ratio = full["seconds_per_edit"] / ours["seconds_per_edit"]
    print(f"{'procedure':32} {'s/edit':>8} {'steps':>6} {'final loss':>11}")
    for name, row in rows.items():
        print(f"{name:32} {row['seconds_per_edit']:8.2f} {row['steps']:6.1f} {row['mean_final_loss']:11.4f}")
    print(f"speed-up: {ratio:.2f}x   max |W_m(ours) - W_m(full)|: {max_diff:.2e}")
    report = {
        "benchmark": "edit_speed",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "model": loaded.model_id,
        "facts": len(facts),
        "steps": steps,
        "layer": empty.manifest.layer.path,
        "k": empty.manifest.tophash.k,
        "procedures": rows,
        "speedup": ratio,
        "max_weight_difference": max_diff,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
