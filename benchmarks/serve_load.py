"""`memoir serve` under load: tokens/s and latency at several concurrencies, for the base model and
for packs of 100 and 1000 edits, all served by one server in one run (the `model` field picks each).

    python benchmarks/serve_load.py [--concurrency 1 4 16] [--edits 100 1000] [--rounds 3] [--out ...]

The packs are synthetic (benchmarks/_synthetic.py: random masks and memory columns on the real
SmolLM2-135M-Instruct) with tau 0, so every request reaches an edit and pays the residual at every
step: the worst case. Clients are threads with the `openai` client on 127.0.0.1; each sends
`--rounds` chat requests one after another (greedy, `--max-tokens` new tokens, unrelated questions).
Configurations are interleaved, and the whole sweep runs `--repeats` times; the table gives the
median tokens/s and the latency percentiles over every request of a configuration.
Goal (issue 15): >= 0.90x the base model's throughput with 1000 edits.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import openai
import torch
from _environment import environment
from _synthetic import synthetic_pack

from memoir_cli.history import edit_record
from memoir_cli.models import load_model
from memoir_cli.serving.server import MemoirServer, ServeOptions
from memoir_cli.session import open_packs
from memoir_cli.store import commit
from memoir_cli.tophash import background_prompts


def saved_pack(loaded, edits: int, folder: Path) -> Path:
    pack = synthetic_pack(loaded, edits, seed=edits)
    pack.manifest.routing.threshold, pack.manifest.routing.auto = 0.0, False
    commit(pack, folder, edit_record("edit", None, [["edit", f.id] for f in pack.facts], pack.facts))
    return folder


def load(url: str, model: str, concurrency: int, rounds: int, max_tokens: int, questions: list[str]) -> dict:
    """`concurrency` clients, `rounds` requests each: wall time, tokens, per-request latencies."""
    latencies: list[float] = []
    tokens, failures = [0], []
    lock = threading.Lock()

    def client(number: int) -> None:
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
        for turn in range(rounds):
            question = questions[(number * rounds + turn) % len(questions)]
            began = time.perf_counter()
            try:
                reply = api.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=max_tokens
                )
            except openai.OpenAIError as error:
                failures.append(repr(error))
                continue
            with lock:
                latencies.append(time.perf_counter() - began)
                tokens[0] += reply.usage.completion_tokens

    threads = [threading.Thread(target=client, args=(n,)) for n in range(concurrency)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    if failures:
        raise SystemExit(f"{len(failures)} requests failed, first: {failures[0]}")
    return {"seconds": wall, "tokens": tokens[0], "latencies": latencies}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--edits", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/serve_load.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    questions = background_prompts()
    with tempfile.TemporaryDirectory() as scratch:
        loaded = load_model(None)
        refs = [saved_pack(loaded, edits, Path(scratch) / f"edits{edits}") for edits in args.edits]
        options = ServeOptions(port=0, max_batch=max(args.concurrency), max_queue=4 * max(args.concurrency))
        server = MemoirServer(refs, open_packs(refs), options)
        models = {"base": server.loaded.model_id, **{f"{e} edits": f"edits{e}" for e in args.edits}}
        runs: dict[tuple[str, int], list[dict]] = {}
        with server.in_background():
            load(server.url, models["base"], 1, 1, args.max_tokens, questions)  # warm-up
            for _ in range(args.repeats):
                for concurrency in args.concurrency:
                    for name, model in models.items():
                        result = load(server.url, model, concurrency, args.rounds, args.max_tokens, questions)
                        runs.setdefault((name, concurrency), []).append(result)
    rows = []
    for concurrency in args.concurrency:
        base_speed = statistics.median(r["tokens"] / r["seconds"] for r in runs[("base", concurrency)])
        for name in models:
            measured = runs[(name, concurrency)]
            latencies = [s for r in measured for s in r["latencies"]]
            speed = statistics.median(r["tokens"] / r["seconds"] for r in measured)
            rows.append(
                {
                    "model": name,
                    "concurrency": concurrency,
                    "requests": len(latencies),
                    "tokens_per_second": speed,
                    "vs_base": speed / base_speed,
                    "p50_seconds": percentile(latencies, 0.5),
                    "p99_seconds": percentile(latencies, 0.99),
                }
            )
    print(f"{'model':>12} {'clients':>7} {'requests':>8} {'tokens/s':>9} {'vs base':>8} {'p50 s':>7} {'p99 s':>7}")
    for row in rows:
        print(
            f"{row['model']:>12} {row['concurrency']:>7} {row['requests']:>8} {row['tokens_per_second']:>9.1f} "
            f"{row['vs_base']:>7.3f}x {row['p50_seconds']:>7.2f} {row['p99_seconds']:>7.2f}"
        )
    settings = {k: getattr(args, k) for k in ("rounds", "repeats", "max_tokens", "threads")}
    document = {"benchmark": "serve_load", **environment(), "settings": settings, "rows": rows}
    Path(args.out).write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
