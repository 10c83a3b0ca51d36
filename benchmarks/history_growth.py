"""Disk growth of a pack's history: V small versions (one ZsRE fact each) on SmolLM2-135M.

Measures, after each version, the bytes on disk of the pack folder, against what keeping every
version as a full copy would cost; then times reading back a version whose files were not kept
(replayed from the nearest kept one), and extrapolates the per-version cost to Llama-3-8B.

    python benchmarks/history_growth.py --versions 100 [--snapshot-every 10] [--facts-per-version 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import torch
from zsre import ZSRE

from memoir_cli.facts import read_zsre_json
from memoir_cli.history import log, open_pack
from memoir_cli.models import load_model
from memoir_cli.store import load_pack
from memoir_cli.workflows import EditOptions, edit_pack

LLAMA3_8B = {"d_model": 4096, "d_ff": 14336}  # the edited down-projection's shape


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def extrapolate(
    d_model: int, d_ff: int, facts: int, every: int, versions: int, record_bytes: float, bytes_per_weight: int
) -> dict:
    """Bytes of V versions on a model of this shape: records, plus one full state per kept version."""
    weight = d_model * d_ff * bytes_per_weight
    masks = facts * (d_ff // 8 + 1)
    full_state = weight + masks
    kept = versions // every + 1
    return {
        "full_copy_bytes": full_state,
        "every_version_full": versions * full_state,
        "ours": kept * full_state + versions * record_bytes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=100)
    parser.add_argument("--facts-per-version", type=int, default=1)
    parser.add_argument("--snapshot-every", type=int, default=10)
    parser.add_argument("--steps", type=int, help="steps per fact (default: the editor's default)")
    parser.add_argument("--work", type=Path, default=Path("benchmarks/work/history"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/history_growth.json"))
    args = parser.parse_args()

    per = args.facts_per_version
    skipped: list[str] = []  # records with an empty target (reported by read_zsre_json)
    facts = read_zsre_json(ZSRE, on_skip=skipped.append, limit=args.versions * per + 10)[: args.versions * per]
    shutil.rmtree(args.work, ignore_errors=True)
    pack = args.work / "pack"
    loaded = load_model("default")
    rows, full_copies, started = [], 0, time.perf_counter()
    for v in range(args.versions):
        summary = edit_pack(
            facts[v * per : (v + 1) * per],
            pack,
            loaded,
            EditOptions(steps=args.steps),
            message=f"night {v + 1}",
            snapshot_every=args.snapshot_every,
        )
        head = load_pack(pack)
        full_copies += sum(entry["bytes"] for entry in head.manifest.files.values())
        rows.append(
            {
                "version": summary.versions[-1],
                "disk_bytes": folder_bytes(pack),
                "full_copies_bytes": full_copies,
                "state_bytes": sum(e["bytes"] for e in head.manifest.files.values()),
            }
        )
        if (v + 1) % 10 == 0:
            print(
                f"version {v + 1}: {rows[-1]['disk_bytes'] / 1e6:.1f} MB on disk vs {full_copies / 1e6:.1f} MB "
                f"as full copies ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    records = sorted((pack / "versions").iterdir())
    record_bytes = sum(p.stat().st_size for p in records) / len(records)
    entries = log(pack)
    dropped = [e["version"] for e in entries if not e["stored"]]
    probe = dropped[-1] if dropped else None
    replay_seconds = None
    if probe is not None:
        began = time.perf_counter()
        open_pack(f"{pack}@{probe}", lambda _pack: loaded)
        replay_seconds = time.perf_counter() - began
    head = load_pack(pack)
    d_model, d_ff = head.manifest.layer.d_model, head.manifest.layer.d_ff
    result = {
        "benchmark": "history_growth",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "data": str(ZSRE),
        "skipped_records": skipped,
        "versions": args.versions,
        "facts_per_version": per,
        "snapshot_every": args.snapshot_every,
        "disk_bytes": rows[-1]["disk_bytes"],
        "full_copies_bytes": rows[-1]["full_copies_bytes"],
        "state_bytes_at_head": rows[-1]["state_bytes"],
        "mean_record_bytes": record_bytes,
        "kept_versions": [e["version"] for e in entries if e["stored"]],
        "replayed_version": probe,
        "replay_seconds": replay_seconds,
        "smollm2_model": extrapolate(
            d_model, d_ff, len(head.facts), args.snapshot_every, args.versions, record_bytes, 4
        ),
        "llama3_8b_float32": extrapolate(
            **LLAMA3_8B,
            facts=args.versions * per,
            every=args.snapshot_every,
            versions=args.versions,
            record_bytes=record_bytes,
            bytes_per_weight=4,
        ),
        "llama3_8b_365_nights_float32": extrapolate(
            **LLAMA3_8B,
            facts=365 * per,
            every=args.snapshot_every,
            versions=365,
            record_bytes=record_bytes,
            bytes_per_weight=4,
        ),
        "rows": rows,
    }
    print(f"\n{'':28} {'ours':>12} {'full copies':>12}")
    print(
        f"{'SmolLM2, measured':28} {result['disk_bytes'] / 1e6:>10.1f}MB {result['full_copies_bytes'] / 1e6:>10.1f}MB"
    )
    for key, label in (
        ("llama3_8b_float32", f"8B, {args.versions} versions"),
        ("llama3_8b_365_nights_float32", "8B, 365 versions"),
    ):
        x = result[key]
        print(f"{label:28} {x['ours'] / 1e9:>10.2f}GB {x['every_version_full'] / 1e9:>10.2f}GB")
    print(f"mean version record: {record_bytes / 1e3:.1f} kB; replaying version {probe}: {replay_seconds or 0:.1f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
