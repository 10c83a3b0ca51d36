"""How much one new edit damages the edits already in a pack, per training setting.

Why: at T = 998 memoir forgets with age (docs/BENCHMARKS.md, "ZsRE at T = 998"): an edit is
reached by its own question and answers wrong, because later edits moved residual columns it
shares with them. A full T = 1000 run takes two hours on 2 cores; this measures the cause
directly, in minutes. From one stored version of a pack (e.g. 250 ZsRE edits), each probe fact
(the records after them) is edited into a fresh copy of that version under each setting, and every
earlier edit's question is scored before and after, teacher-forced:

- "broken": earlier edits whose answer was exactly right and no longer is, per probe edit;
- "d NLL": the mean rise of the earlier edits' target negative log-likelihood;
- the probe's own Rel and Gen (its rephrasing, scored, never trained), steps and seconds.

    python benchmarks/interference.py --pack WORK/memoir/pack@10 --probes 12 \\
        --variant default --variant sgd=optimizer:sgd,lr:16,stop_delta:1e-4

A variant overrides fields of the pack's training settings (config.TrainingConfig); its name is
the table's row.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch
from _environment import environment
from _variants import parse_variant
from zsre import ZSRE

from memoir_cli.editor import editing
from memoir_cli.evaluate import Probe, Scorer
from memoir_cli.facts import Fact, read_zsre_json
from memoir_cli.history import open_pack
from memoir_cli.models import load_model
from memoir_cli.workflows import model_spec_for


@torch.no_grad()
def target_scores(loaded, wrapper, facts: list[Fact], batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Per fact, teacher-forced on its bare question, routed as at inference: whether every target
    token is the argmax, and the mean target-token NLL."""
    scorer = Scorer(loaded.model, loaded.tokenizer, wrapper, batch_size=batch_size)
    scored = scorer.teacher_forced([Probe(f.prompt, f.target) for f in facts])
    return torch.tensor([s.predicted == s.expected for s in scored]), torch.tensor([s.nll for s in scored])


def run_variant(loaded, pack_ref: str, overrides: dict, probes: list[Fact]) -> dict:
    rows = []
    for probe in probes:
        pack = open_pack(pack_ref, lambda _pack: loaded)
        pack.manifest.training = dataclasses.replace(pack.manifest.training, **overrides)
        earlier = list(pack.active_facts())
        with editing(loaded, pack) as editor:
            exact_before, nll_before = target_scores(loaded, editor.wrapper, earlier)
            editor.protection()  # built once per `memoir edit` run, from every active edit: not the edit's time
            start = time.perf_counter()
            result = editor.edit(probe)
            seconds = time.perf_counter() - start
            exact_after, nll_after = target_scores(loaded, editor.wrapper, earlier)
            own, _ = target_scores(loaded, editor.wrapper, [probe])
            rephrase = dataclasses.replace(probe, prompt=probe.rephrases[0]) if probe.rephrases else None
            gen = target_scores(loaded, editor.wrapper, [rephrase])[0].float().mean().item() if rephrase else None
        broken = (exact_before & ~exact_after).nonzero().squeeze(1).tolist()
        rows.append(
            {
                "probe": probe.id,
                "steps": result.steps,
                "converged": result.converged,
                "seconds": seconds,
                "rel": float(own[0]),
                "gen": gen,
                "broken": len(broken),
                "broken_ids": [earlier[i].id for i in broken],
                "mended": int((~exact_before & exact_after).sum()),
                "d_nll": (nll_after - nll_before).mean().item(),
                "max_d_nll": (nll_after - nll_before).max().item(),
            }
        )
        print(f"  {probe.id}: {result.steps} steps, {seconds:.1f} s, broken {len(broken)}", flush=True)
    return {
        "earlier": len(earlier),
        "probes": rows,
        "steps": statistics.mean(r["steps"] for r in rows),
        "seconds": statistics.median(r["seconds"] for r in rows),
        "rel": statistics.mean(r["rel"] for r in rows),
        "gen": statistics.mean(r["gen"] for r in rows if r["gen"] is not None),
        "broken": statistics.mean(r["broken"] for r in rows),
        "mended": statistics.mean(r["mended"] for r in rows),
        "d_nll": statistics.mean(r["d_nll"] for r in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--pack", required=True, help="a pack made from the first records of ZsRE, PACK@N for a version"
    )
    parser.add_argument("--probes", type=int, default=12, help="records after the pack's edits to edit, one at a time")
    parser.add_argument("--variant", action="append", default=[], help="name=field:value,... (repeatable)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/interference.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    first = open_pack(args.pack)
    loaded = load_model(model_spec_for(first))
    done = {f.id for f in first.facts}
    records = read_zsre_json(ZSRE, on_skip=lambda _message: None)
    probes = [f for f in records if f.id not in done][: args.probes]
    variants = [parse_variant(v) for v in args.variant or ["default"]]

    results = {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name, overrides in variants:
        print(f"[{name}] {overrides or 'the pack settings'}", flush=True)
        results[name] = run_variant(loaded, args.pack, overrides, probes) | {"overrides": overrides}
        report = {"pack": args.pack, "probes": len(probes), "environment": environment(), "variants": results}
        args.out.write_text(json.dumps(report, indent=1))  # after each variant: a long run can be cut short

    print(f"\n{len(probes)} probe edits into {args.pack} ({results[variants[0][0]]['earlier']} earlier edits)")
    print("| variant | broken per edit | mended | mean d NLL | probe Rel | probe Gen | steps | s/edit (median) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['broken']:.2f} | {r['mended']:.2f} | {r['d_nll']:.4f} | {r['rel']:.2f} | {r['gen']:.2f} "
            f"| {r['steps']:.1f} | {r['seconds']:.2f} |"
        )


if __name__ == "__main__":
    main()
