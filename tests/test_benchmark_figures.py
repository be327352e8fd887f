"""Figures shown in benchmarks/README.md are the ones the benchmark scripts wrote."""

import importlib.util
import json
from pathlib import Path

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def test_startup_table_matches_the_measurements():
    spec = importlib.util.spec_from_file_location("cli_startup", BENCHMARKS / "cli_startup.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    before, now = (
        json.loads((BENCHMARKS / "results" / name).read_text())
        for name in ("cli_startup_before.json", "cli_startup.json")
    )
    assert script.markdown_table(before, now) in (BENCHMARKS / "README.md").read_text()
    assert max(now["median_seconds"].values()) < 0.5  # what the table claims: every command answers in under 0.5 s
