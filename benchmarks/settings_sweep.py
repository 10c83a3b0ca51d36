"""User-facing quality of edit settings on SmolLM2-135M: edit the first N ZsRE records
sequentially, then count greedy generations that start with the target (edited prompts and
their rephrasings) and unrelated prompts whose generation is unchanged.

    python benchmarks/settings_sweep.py --records 10 --config 30,1,0 --config 30,4,8
    (each --config is steps,lr,rehearse; the default layer, k and threshold are used)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from zsre import ZSRE

from memoir_cli.facts import read_zsre_json
from memoir_cli.session import Session
from memoir_cli.workflows import EditOptions, edit_pack


def evaluate(config: str, facts, max_new_tokens: int) -> dict:
    steps, lr, rehearse = config.split(",")
    options = EditOptions(steps=int(steps), lr=float(lr), rehearse=int(rehearse))
    with tempfile.TemporaryDirectory() as folder:
        summary = edit_pack(facts, Path(folder) / "pack", None, options)
        session = Session([Path(folder) / "pack"])
        edited = session.answer([f.prompt for f in facts], max_new_tokens)
        rephrased = session.answer([f.rephrases[0] for f in facts], max_new_tokens)
        unrelated = session.answer([f.locality[0]["prompt"] for f in facts], max_new_tokens, compare=True)
    n = len(facts)
    return {
        "config": {"steps": int(steps), "lr": float(lr), "rehearse": int(rehearse)},
        "edited_prompt_hits": sum(a.output.strip().startswith(f.target) for a, f in zip(edited, facts)) / n,
        "rephrase_hits": sum(a.output.strip().startswith(f.target) for a, f in zip(rephrased, facts)) / n,
        "unrelated_unchanged": sum(a.output == a.base_output for a in unrelated) / n,
        "seconds_per_edit": sum(r.seconds for r in summary.results) / n,
        "mean_final_loss": sum(r.loss for r in summary.results) / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10)
    parser.add_argument("--config", action="append", required=True, help="steps,lr,rehearse")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--out", default="benchmarks/results/settings_sweep.json")
    args = parser.parse_args()
    facts = read_zsre_json(ZSRE, on_skip=lambda problem: None)[: args.records]
    rows = []
    print(
        f"{'steps':>5} {'lr':>4} {'rehearse':>8} | {'edited':>6} {'rephrase':>8} {'unrelated':>9} | "
        f"{'s/edit':>6} {'loss':>6}"
    )
    for config in args.config:
        row = evaluate(config, facts, args.max_new_tokens)
        rows.append(row)
        c = row["config"]
        print(
            f"{c['steps']:>5} {c['lr']:>4} {c['rehearse']:>8} | {row['edited_prompt_hits']:>6.2f} "
            f"{row['rephrase_hits']:>8.2f} {row['unrelated_unchanged']:>9.2f} | "
            f"{row['seconds_per_edit']:>6.2f} {row['mean_final_loss']:>6.3f}",
            flush=True,
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {"benchmark": "settings_sweep", "date": time.strftime("%Y-%m-%d"), "records": len(facts), "rows": rows},
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
