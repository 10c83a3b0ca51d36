"""Whether one setting scores worse than another: paired over the same ZsRE records and several draws.

At T = 100 a score moves by 0.01-0.02 between two draws of the same setting (`zsre.py --seed`:
another TopHash permutation and other self-written prefixes), as much as two settings differ, so
one pair of runs cannot say whether a setting is worse. This pairs each record's score under the
reference and under the candidate within each draw (the `memoir eval` JSONs that `zsre.py` leaves
in its work folder, `memoir/T<T>.eval.json`) and reports, per score:
- both means and the mean difference (candidate minus reference) over every record of every draw;
- a 95% interval of that difference from a bootstrap over records, each record taken with all its
  draws, since what makes a record hard is the same in every draw;
- how many record-draws the candidate wins and loses, and the two-sided sign test's p-value.

    python benchmarks/paired.py --pair OLD_S0/memoir/T100.eval.json NEW_S0/memoir/T100.eval.json \
        --pair OLD_S1/memoir/T100.eval.json NEW_S1/memoir/T100.eval.json --out results/paired.json
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
from pathlib import Path

from _environment import environment

# Each score: its name in the table, and where a record of `memoir eval --out` keeps it.
SCORES: dict[str, tuple[str, ...]] = {
    "TF Rel": ("rel",),
    "TF Gen": ("gen",),
    "TF Loc": ("loc",),
    "WILD question Rel": ("wild", "question", "rel"),
    "WILD question Gen": ("wild", "question", "gen"),
    "WILD question Loc": ("wild", "question", "loc"),
    "WILD chat Rel": ("wild", "chat", "rel"),
    "WILD chat Gen": ("wild", "chat", "gen"),
    "WILD chat Loc": ("wild", "chat", "loc"),
}
RESAMPLES = 10_000


def per_record(path: Path) -> dict[str, dict]:
    """The records of one evaluation, by id."""
    try:
        return {record["id"]: record for record in json.loads(path.read_text())["per_record"]}
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise SystemExit(f"{path}: not the --out JSON of `memoir eval` ({type(error).__name__}: {error})") from None


def score_of(record: dict, where: tuple[str, ...]) -> float | None:
    """A record's score, or None where the evaluation did not score it (no chat context, say)."""
    value = record
    for key in where:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value)


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact p-value that wins and losses are equally likely (ties left out)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def bootstrap_interval(differences: list[float], rng: random.Random) -> tuple[float, float]:
    """95% percentile interval of the mean of per-record differences, records resampled."""
    means = sorted(statistics.fmean(rng.choices(differences, k=len(differences))) for _ in range(RESAMPLES))
    return means[int(0.025 * RESAMPLES)], means[int(0.975 * RESAMPLES) - 1]


def compare(pairs: list[tuple[Path, Path]]) -> list[dict]:
    """One row per score that every pair scored: means, difference, interval, wins, losses, p."""
    draws = [(per_record(reference), per_record(candidate)) for reference, candidate in pairs]
    for (reference, candidate), (old, new) in zip(pairs, draws, strict=True):
        if old.keys() != new.keys():
            raise SystemExit(f"{reference} and {candidate} score different records: pair runs of the same T")
    rows = []
    for name, where in SCORES.items():
        by_record: dict[str, list[float]] = {}
        olds, news, wins, losses = [], [], 0, 0
        for old, new in draws:
            for record_id in old:
                before, after = score_of(old[record_id], where), score_of(new[record_id], where)
                if before is None or after is None:
                    continue
                olds.append(before)
                news.append(after)
                by_record.setdefault(record_id, []).append(after - before)
                wins += after > before
                losses += after < before
        if not by_record:
            continue
        # the mean of per-record means equals the mean over record-draws when every draw scores every record
        differences = [statistics.fmean(values) for values in by_record.values()]
        low, high = bootstrap_interval(differences, random.Random(0))
        rows.append(
            {
                "score": name,
                "reference": statistics.fmean(olds),
                "candidate": statistics.fmean(news),
                "difference": statistics.fmean(differences),
                "interval_95": [low, high],
                "wins": wins,
                "losses": losses,
                "sign_test_p": sign_test(wins, losses),
                "record_draws": len(olds),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--pair",
        nargs=2,
        action="append",
        type=Path,
        required=True,
        metavar=("REFERENCE", "CANDIDATE"),
        help="the eval JSONs of one draw: the reference setting's, then the candidate's (repeat per draw)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/paired.json"))
    args = parser.parse_args()
    for path in (path for pair in args.pair for path in pair):
        if not path.is_file():
            parser.error(f"{path}: no such file")

    rows = compare([(reference, candidate) for reference, candidate in args.pair])
    print(f"{len(args.pair)} draws; candidate minus reference, 95% bootstrap interval over records")
    print(f"{'score':<20} {'reference':>9} {'candidate':>9} {'diff':>7} {'95% interval':>17}", end="")
    print(f" {'wins':>5} {'losses':>6} {'p':>6}")
    for row in rows:
        low, high = row["interval_95"]
        interval = f"[{low:+.3f}, {high:+.3f}]"
        print(
            f"{row['score']:<20} {row['reference']:>9.3f} {row['candidate']:>9.3f} {row['difference']:>+7.3f}"
            f" {interval:>17} {row['wins']:>5} {row['losses']:>6} {row['sign_test_p']:>6.3f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "paired", **environment(), "pairs": [[str(a), str(b)] for a, b in args.pair], "rows": rows}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
