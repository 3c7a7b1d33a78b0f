"""Compare two `make bench` results files: which ratios moved by more than their noise band.

Every table of bench/run.py compares paths of one group (a family, a measure, a scenario)
with the group's first path, its reference (raw, the bridge, one backend directly), as the
median of per-round ratios; its ratio table also compares them with the group's other
references (`pairs`). This script recomputes all those ratios from the samples of both files
and prints each ratio the two files have in common, marking those whose change exceeds the
band.

The band of a ratio is how far it moved between repeated runs of an unchanged datapath on
this machine: `--measure-noise A.json B.json ...` computes it (the largest difference of that
ratio between any two of the files, at least --min-band) and writes it as JSON; bench/noise.json
holds the bands docs/benchmarks.md describes. A ratio with no band gets --min-band.

    bench/compare.py OLD.json NEW.json            # the table, exit 1 if something moved
    bench/compare.py --measure-noise A.json B.json > bench/noise.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
from pathlib import Path

NOISE = Path(__file__).resolve().parent / "noise.json"
RAW_NAT = "raw-nat"  # raw plus Docker's embedded-DNS NAT rules in both namespaces (run.py)


def sample_groups(result: dict) -> dict[tuple[str, ...], dict[str, list[float]]]:
    """(scenario, measure..., family) -> {path: samples}, paths in the order the run wrote them
    (the first is the group's reference)."""
    groups: dict[tuple[str, ...], dict[str, list[float]]] = {}

    def walk(node: dict, where: tuple[str, ...]) -> None:
        for key, value in node.items():
            if isinstance(value, list):
                groups.setdefault(where, {})[key] = [float(v) for v in value]
            elif isinstance(value, dict):
                walk(value, (*where, key))

    for scenario, body in result.items():
        if isinstance(body, dict) and isinstance(body.get("samples"), dict):
            walk(body["samples"], (scenario,))
    return groups


def pairs(names: list[str]) -> list[tuple[str, str]]:
    """(path, reference) for every ratio of a group whose paths are `names`, first path first:
    every path against the first (raw, one backend directly, ...); besides, pycilium-N
    against raw plus Docker's DNS NAT, the bridge and ip(6)tables with the same N, the bridge
    against raw plus DNS NAT (which it carries too), and a VIP with K backends against the K
    backends directly in turn (issue 17's references)."""
    first, present = names[0], set(names)
    out = [(name, first) for name in names[1:]]
    for name in names[1:]:
        kind, _, count = name.partition("-")
        if kind == "cil":
            more = [RAW_NAT, "bridge", f"ipt-{count}"]
        elif name == "bridge":
            more = [RAW_NAT]
        elif kind == "vip":
            more = [f"rot-{count}"]
        else:
            more = []
        out += [(name, ref) for ref in more if ref in present and ref != first]
    return out


def ratios(result: dict) -> dict[str, float]:
    """Ratio name ("scenario/measure/family: path / reference") -> median per-round ratio."""
    out = {}
    for where, paths in sample_groups(result).items():
        for name, reference_name in pairs(list(paths)):
            reference = paths[reference_name]
            rounds = [s / r for s, r in zip(paths[name], reference, strict=False) if r > 0]
            if rounds:
                out[f"{'/'.join(where)}: {name} / {reference_name}"] = statistics.median(rounds)
    return out


def measure_noise(results: list[dict], min_band: float) -> dict[str, float]:
    """For every ratio in at least two runs: the largest difference between two of them."""
    per_run = [ratios(r) for r in results]
    bands: dict[str, float] = {}
    for a, b in itertools.combinations(per_run, 2):
        for key in a.keys() & b.keys():
            bands[key] = max(bands.get(key, min_band), abs(a[key] - b[key]))
    # Rounded up (past float dust): a band rounded down would flag the runs it came from.
    return {key: math.ceil(round(band * 1000, 6)) / 1000 for key, band in sorted(bands.items())}


def compare(old: dict, new: dict, bands: dict[str, float], min_band: float) -> list[tuple]:
    """Rows (ratio, old, new, change, band, moved) for every ratio both runs have."""
    before, after = ratios(old), ratios(new)
    rows = []
    for key in sorted(before.keys() & after.keys()):
        change = after[key] - before[key]
        band = bands.get(key, min_band)
        rows.append((key, before[key], after[key], change, band, abs(change) > band))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="OLD NEW, or the repeated runs")
    parser.add_argument("--measure-noise", action="store_true", help="write bands as JSON")
    parser.add_argument("--noise", type=Path, default=NOISE, help="bands file (%(default)s)")
    parser.add_argument(
        "--min-band", type=float, default=0.05, help="band of a ratio with none measured"
    )
    parser.add_argument("--all", action="store_true", help="also print ratios that held")
    args = parser.parse_args(argv)
    results = [json.loads(path.read_text()) for path in args.files]
    if args.measure_noise:
        if len(results) < 2:
            parser.error("--measure-noise needs at least two results files")
        json.dump(measure_noise(results, args.min_band), sys.stdout, indent=1)
        print()
        return 0
    if len(results) != 2:
        parser.error("give OLD and NEW")
    bands = json.loads(args.noise.read_text()) if args.noise.exists() else {}
    rows = compare(*results, bands, args.min_band)
    moved = [row for row in rows if row[5]]
    print(f"{len(rows)} ratios in both runs, {len(moved)} moved beyond their noise band")
    print(f"{'ratio':<58} {'old':>6} {'new':>6} {'change':>7} {'band':>6}")
    for key, before, after, change, band, is_moved in rows:
        if is_moved or args.all:
            mark = " <-" if is_moved else ""
            print(f"{key:<58} {before:6.2f} {after:6.2f} {change:+7.2f} {band:6.2f}{mark}")
    return 1 if moved else 0


if __name__ == "__main__":
    sys.exit(main())
