"""What the unrelated prompts' cache saves a small edit run: one ZsRE fact edited into two copies of a
pack, one without `cache/unrelated.safetensors` (the run reads the 200 prompts in each form) and one
with it (the run checks one prompt per form), timed as whole `edit_pack` runs with the model loaded.

    python benchmarks/unrelated_cache.py --pack WORK/memoir/T100 [--facts 4] \
        [--out benchmarks/results/unrelated_cache.json]

The facts are the ZsRE records after the pack's own. The order of the two runs alternates from fact
to fact, after one warm-up run that also leaves the cache file both copies start from. The pack is
read, never written: the copies go to a temporary folder. Each pair must end with the same memory
and the same calibration, or the script stops.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from _environment import environment
from zsre import ZSRE

from memoir_cli.facts import Fact, read_zsre_json
from memoir_cli.models import LoadedModel, load_model
from memoir_cli.store import load_pack, unrelated_cache
from memoir_cli.workflows import EditOptions, edit_pack, model_spec_for


def timed_run(fact: Fact, pack: Path, loaded: LoadedModel) -> tuple[float, float]:
    """Seconds of the whole run, and of the fact's fit within it."""
    started = time.perf_counter()
    summary = edit_pack([fact], pack, loaded, EditOptions())
    return time.perf_counter() - started, summary.results[0].seconds


def measure(fact: Fact, source: Path, work: Path, cached: Path, loaded: LoadedModel, cache_first: bool) -> dict:
    """One fact into a copy without the cache and a copy with `cached` as its cache file."""
    copies = {"without": work / f"{fact.id}-without", "with": work / f"{fact.id}-with"}
    for copy in copies.values():
        shutil.copytree(source, copy)
    unrelated_cache(copies["without"]).unlink(missing_ok=True)
    shutil.copy(cached, unrelated_cache(copies["with"]))
    runs = {name: timed_run(fact, copies[name], loaded) for name in sorted(copies, reverse=not cache_first)}
    without, with_cache = (load_pack(copies[name]) for name in ("without", "with"))
    if not torch.equal(without.memory.weight, with_cache.memory.weight) or (
        without.manifest.routing.calibration != with_cache.manifest.routing.calibration
    ):
        raise SystemExit(f"{fact.id}: the run from the cache made another pack")
    return {
        "fact": fact.id,
        "without_cache_s": runs["without"][0],
        "with_cache_s": runs["with"][0],
        "fit_s": (runs["without"][1], runs["with"][1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=Path, required=True)
    parser.add_argument("--facts", type=int, default=4)
    parser.add_argument("--out", default="benchmarks/results/unrelated_cache.json")
    args = parser.parse_args()
    pack = load_pack(args.pack)
    if not pack.manifest.routing.auto:
        raise SystemExit(f"{args.pack}: this pack's threshold is fixed; only --threshold auto reads the prompts")
    known = {fact.id for fact in pack.facts}
    records = read_zsre_json(ZSRE, on_skip=lambda problem: None, limit=len(known) + 2 * args.facts + 10)
    facts = [fact for fact in records if fact.id not in known][: args.facts + 1]
    if len(facts) <= args.facts:
        raise SystemExit(f"{ZSRE} has too few records after the pack's {len(known)}")
    loaded = load_model(model_spec_for(pack))
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        warm = work / "warm-up"
        shutil.copytree(args.pack, warm)
        unrelated_cache(warm).unlink(missing_ok=True)
        edit_pack([facts[-1]], warm, loaded, EditOptions())  # the last fact: not one of those timed
        rows = [
            measure(fact, args.pack, work, unrelated_cache(warm), loaded, cache_first=n % 2 == 1)
            for n, fact in enumerate(facts[:-1])
        ]
    print(f"{'fact':>10} {'without cache s':>16} {'with cache s':>13} {'fit s (without, with)':>22}")
    for row in rows:
        fits = ", ".join(f"{s:.1f}" for s in row["fit_s"])
        print(f"{row['fact']:>10} {row['without_cache_s']:>16.1f} {row['with_cache_s']:>13.1f} {fits:>22}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"benchmark": "unrelated_cache", "pack": str(args.pack), **environment(), "rows": rows}, indent=2)
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
