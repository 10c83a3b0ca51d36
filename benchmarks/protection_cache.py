"""What `--protect` costs at the start of an edit run on a grown pack: summing its matrix from every
active edit (one forward pass each), against starting from the pack's cache (loading the file and
checking the last edit's inputs), for each pack given.

    python benchmarks/protection_cache.py --pack PACK [--pack PACK ...] [--out benchmarks/results/protection_cache.json]

The packs are read, never written: the cache goes to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from _environment import environment

from memoir_cli.editor import editing
from memoir_cli.models import load_model
from memoir_cli.store import load_pack
from memoir_cli.workflows import model_spec_for


def measure(loaded, pack_path: Path, cache: Path) -> dict:
    """Seconds to sum the matrix, to save it, and to start from the saved file, for one pack."""
    pack = load_pack(pack_path)
    with editing(loaded, pack, protection_cache=cache) as editor:
        started = time.perf_counter()
        summed = editor.protection()
        summing = time.perf_counter() - started
        if summed is None:
            raise SystemExit(f"{pack_path}: this pack does not protect (training.protect is 0)")
        started = time.perf_counter()
        editor.save_protection()
        saving = time.perf_counter() - started
    with editing(loaded, pack, protection_cache=cache) as editor:
        started = time.perf_counter()
        cached = editor.protection()
        loading = time.perf_counter() - started
    assert cached is not None and torch.equal(cached.matrix, summed.matrix)  # the cache's promise
    return {
        "pack": str(pack_path),
        "active_edits": summed.edits,
        "sum_s": summing,
        "save_s": saving,
        "load_and_check_s": loading,
        "cache_bytes": cache.stat().st_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=Path, action="append", required=True)
    parser.add_argument("--out", default="benchmarks/results/protection_cache.json")
    args = parser.parse_args()
    loaded = load_model(model_spec_for(load_pack(args.pack[0])))
    with tempfile.TemporaryDirectory() as folder:
        rows = [measure(loaded, path, Path(folder) / f"{n}.safetensors") for n, path in enumerate(args.pack)]
    print(f"{'active edits':>12} {'sum s':>8} {'save s':>7} {'load+check s':>12} {'file MB':>8}")
    for row in rows:
        print(
            f"{row['active_edits']:>12} {row['sum_s']:>8.1f} {row['save_s']:>7.2f} "
            f"{row['load_and_check_s']:>12.2f} {row['cache_bytes'] / 1e6:>8.1f}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"benchmark": "protection_cache", **environment(), "rows": rows}, indent=2) + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
