"""Routing at scale: the mask bank's best match per prompt, memory held and add() per edit, on
synthetic TopHash masks (k = 28.6% of d_ff, as the defaults), one CPU thread.

    python benchmarks/routing_scale.py [--edits 10000 100000] [--d-ff 1536 14336] [--out ...]

Targets (issue 16): <= 2 ms per prompt at 100,000 edits for d_ff 1536 and <= 25 ms for d_ff 14336;
memory within 10% of the packed size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from _environment import environment
from _synthetic import random_masks

from memoir_cli.bank import MaskBank
from memoir_cli.config import default_top_k


def measure(edits: int, d_ff: int, queries: int, seed: int = 0) -> dict:
    k, generator = default_top_k(d_ff), torch.Generator().manual_seed(seed)
    bank = MaskBank(d_ff)
    add_seconds = []
    for start in range(0, edits, 1000):
        chunk = random_masks(min(1000, edits - start), d_ff, k, generator)
        for offset, mask in enumerate(chunk):
            began = time.perf_counter()
            bank.add(f"e{start + offset}", mask)
            add_seconds.append(time.perf_counter() - began)
    for row in range(0, edits, 10):  # some reverted edits, as a real pack has
        bank.active[row] = False
    prompts = random_masks(queries, d_ff, k, generator)
    bank.best_match(prompts[:1])  # warm
    match_seconds = []
    for prompt in prompts:
        began = time.perf_counter()
        bank.best_match(prompt.unsqueeze(0))
        match_seconds.append(time.perf_counter() - began)
    packed = edits * ((d_ff + 7) // 8)
    return {
        "edits": edits,
        "d_ff": d_ff,
        "k": k,
        "match_ms_median": statistics.median(match_seconds) * 1e3,
        "match_ms_p90": sorted(match_seconds)[int(0.9 * len(match_seconds))] * 1e3,
        "add_us_mean": statistics.fmean(add_seconds) * 1e6,
        "add_us_mean_last_1000": statistics.fmean(add_seconds[-1000:]) * 1e6,
        "held_bytes": bank.nbytes,
        "packed_bytes": packed,
        "held_over_packed": bank.nbytes / packed,
        "float_copy_bytes_before": edits * d_ff * 4,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--d-ff", type=int, nargs="+", default=[1536, 14336])
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--out", default="benchmarks/results/routing_scale.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [measure(n, d_ff, args.queries) for d_ff in args.d_ff for n in args.edits]
    print(
        f"{'edits':>8} {'d_ff':>6} {'match ms':>9} {'p90 ms':>7} {'add us':>7} {'add us (last 1k)':>16} "
        f"{'held MiB':>9} {'packed MiB':>10} {'held/packed':>11}"
    )
    for r in rows:
        print(
            f"{r['edits']:>8} {r['d_ff']:>6} {r['match_ms_median']:>9.2f} {r['match_ms_p90']:>7.2f} "
            f"{r['add_us_mean']:>7.1f} {r['add_us_mean_last_1000']:>16.1f} {r['held_bytes'] / 2**20:>9.1f} "
            f"{r['packed_bytes'] / 2**20:>10.1f} {r['held_over_packed']:>11.3f}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"environment": environment(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
