"""How long the command line takes to answer ``--version`` and ``--help``, next to a bare Python start.

Each command runs as a fresh process (``python -m lowmed ...``), as a user typing it would start one; the figure
is the median wall time of ``--repeats`` runs. Prints a table and, with ``--out``, writes JSON; with ``--before``
(the JSON of an earlier measurement) also the markdown table of both that benchmarks/README.md shows.

    python benchmarks/cli_startup.py [--repeats 5] [--out benchmarks/results/cli_startup.json]
                                     [--before benchmarks/results/cli_startup_before.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass": ["-c", "pass"],
    "lowmed --version": ["-m", "lowmed", "--version"],
    "lowmed --help": ["-m", "lowmed", "--help"],
    **{
        f"lowmed {name} --help": ["-m", "lowmed", name, "--help"]
        for name in ("prepare", "subsample", "train", "finetune", "evaluate", "compare", "experiment", "models")
    },
}


def median_seconds(arguments: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, *arguments], check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def markdown_table(before: dict, after: dict) -> str:
    """Median seconds before and after, and how many times faster, one row a command."""
    lines = ["| command | before (s) | now (s) | faster |", "|---|---|---|---|"]
    for name, seconds in after["median_seconds"].items():
        earlier = before["median_seconds"][name]
        lines.append(f"| `{name}` | {earlier:.2f} | {seconds:.2f} | {earlier / seconds:.0f}× |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", help="JSON file for the figures")
    parser.add_argument("--before", help="JSON of an earlier run, for a before/now markdown table")
    args = parser.parse_args()
    figures = {name: round(median_seconds(arguments, args.repeats), 3) for name, arguments in COMMANDS.items()}
    width = max(map(len, figures))
    for name, seconds in figures.items():
        print(f"{name:<{width}}  {seconds:6.3f} s")
    result = {
        "repeats": args.repeats,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "median_seconds": figures,
    }
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
    if args.before:
        with open(args.before, encoding="utf-8") as handle:
            print(markdown_table(json.load(handle), result))


if __name__ == "__main__":
    main()
