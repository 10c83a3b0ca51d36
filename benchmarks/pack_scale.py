"""A large pack end to end: build, commit, load, show, log, apply, diff and one more version, for
synthetic packs of 10,000 and 100,000 edits on the real SmolLM2-135M-Instruct (d_ff 1536).

    python benchmarks/pack_scale.py [--edits 10000 100000] [--work benchmarks/work/pack_scale] [--out ...]

The facts and masks are synthetic (benchmarks/_synthetic.py): this measures routing, storage and
load time, not quality. Nothing in a pack's life should grow faster than its number of edits: the
seconds per 1,000 edits of each step should stay flat from 10,000 to 100,000.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from _environment import environment
from _synthetic import fill, synthetic_pack
from generation_speed import seconds_to_generate

from memoir_cli.diff import Side, diff
from memoir_cli.history import edit_record, log, open_pack
from memoir_cli.memory import attach, detach
from memoir_cli.models import load_model
from memoir_cli.store import commit, load_pack
from memoir_cli.workflows import revert_edits


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def timed(action):
    began = time.perf_counter()
    result = action()
    return result, time.perf_counter() - began


def measure(loaded, edits: int, work: Path) -> dict:
    path = work / f"pack-{edits}"
    shutil.rmtree(path, ignore_errors=True)
    pack, build = timed(lambda: synthetic_pack(loaded, edits))
    ids = [f.id for f in pack.facts]
    _, first_commit = timed(
        lambda: commit(pack, path, edit_record("edit", "synthetic", [["edit", i] for i in ids], []))
    )
    del pack
    before = rss_bytes()
    pack, load = timed(lambda: load_pack(path))
    held = rss_bytes() - before
    show = subprocess.run([sys.executable, "-m", "memoir_cli", "show", str(path), "--json"], capture_output=True)
    assert show.returncode == 0, show.stderr
    _, show_seconds = timed(
        lambda: subprocess.run(
            [sys.executable, "-m", "memoir_cli", "show", str(path), "--json"], check=True, capture_output=True
        )
    )
    prompt = ["The capital city of the country with the most lakes is"]
    base = min(seconds_to_generate(loaded, prompt, 8) for _ in range(3))
    attach(loaded.model, pack)
    applied = min(seconds_to_generate(loaded, prompt, 8) for _ in range(3))
    queries = pack.memory.query_masks(torch.randn(1, pack.memory.bank.d_ff))
    _, route = timed(lambda: pack.memory.best_match(queries))
    detach(loaded.model)
    _, revert = timed(lambda: revert_edits(path, [ids[0]]))
    more = fill(load_pack(path), 1, seed=1)
    added = more.facts[-1]
    _, add_commit = timed(lambda: commit(more, path, edit_record("edit", "one more", [["edit", added.id]], [added])))
    _, diff_seconds = timed(
        lambda: diff(Side("v2", open_pack(f"{path}@2")), Side("v3", open_pack(path)), stacked=False)
    )
    _, log_seconds = timed(lambda: log(path))
    files = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return {
        "edits": edits,
        "build_s": build,
        "first_commit_s": first_commit,
        "load_s": load,
        "rss_after_load_bytes": held,
        "bank_bytes": pack.memory.bank.nbytes,
        "show_json_s": show_seconds,
        "route_ms": route * 1e3,
        "apply_8_tokens_s": applied,
        "base_8_tokens_s": base,
        "revert_commit_s": revert,
        "one_more_edit_commit_s": add_commit,
        "diff_s": diff_seconds,
        "log_s": log_seconds,
        "pack_folder_bytes": files,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--work", default="benchmarks/work/pack_scale")
    parser.add_argument("--out", default="benchmarks/results/pack_scale.json")
    args = parser.parse_args()
    loaded = load_model(None)
    rows = [measure(loaded, n, Path(args.work)) for n in args.edits]
    columns = {  # title: (key, scale)
        "edits": ("edits", 1),
        "commit s": ("first_commit_s", 1),
        "load s": ("load_s", 1),
        "RSS MiB": ("rss_after_load_bytes", 2**-20),
        "show s": ("show_json_s", 1),
        "route ms": ("route_ms", 1),
        "apply s": ("apply_8_tokens_s", 1),
        "base s": ("base_8_tokens_s", 1),
        "revert s": ("revert_commit_s", 1),
        "+1 edit s": ("one_more_edit_commit_s", 1),
        "diff s": ("diff_s", 1),
        "log s": ("log_s", 1),
        "disk MiB": ("pack_folder_bytes", 2**-20),
    }
    print(" ".join(f"{title:>10}" for title in columns))
    for r in rows:
        print(
            " ".join(
                f"{r[key]:>10}" if key == "edits" else f"{r[key] * scale:>10.4g}" for key, scale in columns.values()
            )
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"environment": environment(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
