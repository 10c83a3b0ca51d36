"""Greedy generation speed with a large pack attached, against the base model, in the same run.

    python benchmarks/generation_speed.py [--edits 1000] [--batch 1 8] [--new-tokens 32] [--out ...]

The pack is synthetic (benchmarks/_synthetic.py: 1000 random masks and memory columns on the real
SmolLM2-135M-Instruct). "routed" sets tau to 0, so every row reaches an edit and pays the residual
at every step (the worst case); "unrouted" sets tau above 1, so rows only pay for routing. Each
configuration runs --repeats times, interleaved, after one warm-up; the table gives the median.
Target (issue 16): >= 0.95x the base model's tokens/s with 1000 edits, at batch 1 and 8.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from _environment import environment
from _synthetic import synthetic_pack

from memoir_cli.batching import encode_left_padded
from memoir_cli.memory import attach, detach
from memoir_cli.models import load_model
from memoir_cli.tophash import background_prompts


def seconds_to_generate(loaded, prompts: list[str], new_tokens: int) -> float:
    batch = encode_left_padded(loaded.tokenizer, prompts, torch.device("cpu"))
    batch.pop("position_ids", None)  # generate derives them from the attention mask
    began = time.perf_counter()
    with torch.no_grad():
        loaded.model.generate(
            **batch,
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=loaded.tokenizer.pad_token_id,
            top_p=None,
            top_k=None,
            temperature=None,
        )
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=1000)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/generation_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(None)
    pack = synthetic_pack(loaded, args.edits)
    thresholds = {"base": None, "routed": 0.0, "unrouted": 1.01}
    rows = []
    for batch in args.batch:
        prompts = background_prompts()[:batch]
        seconds: dict[str, list[float]] = {name: [] for name in thresholds}
        for repeat in range(args.repeats + 1):
            for name, threshold in thresholds.items():
                if threshold is not None:
                    pack.manifest.routing.threshold = threshold
                    wrapper = attach(loaded.model, pack)
                elapsed = seconds_to_generate(loaded, prompts, args.new_tokens)
                if threshold is not None:
                    routed = sum(r["edit_id"] is not None for r in wrapper.describe_routes())
                    assert routed == (batch if threshold == 0.0 else 0), (name, routed)
                    detach(loaded.model)
                if repeat:  # the first round warms up
                    seconds[name].append(elapsed)
        base = statistics.median(seconds["base"])
        for name, measured in seconds.items():
            median = statistics.median(measured)
            rows.append(
                {
                    "edits": args.edits if name != "base" else 0,
                    "batch": batch,
                    "config": name,
                    "new_tokens": args.new_tokens,
                    "seconds_median": median,
                    "tokens_per_s": batch * args.new_tokens / median,
                    "vs_base": base / median,
                    "seconds": measured,
                }
            )
    print(f"{'batch':>5} {'config':>9} {'edits':>6} {'tokens/s':>9} {'vs base':>8}")
    for r in rows:
        print(f"{r['batch']:>5} {r['config']:>9} {r['edits']:>6} {r['tokens_per_s']:>9.1f} {r['vs_base']:>8.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    result = {"environment": environment(), "threads": args.threads, "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
