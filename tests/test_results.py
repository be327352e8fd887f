"""The committed studies in results/: the tables in each report.md and in the README are what lowmed's own compare
code makes of the per-run files behind them, so the numbers shown can never drift from the runs (no training)."""

import json
from pathlib import Path

import pandas as pd
import pytest

from lowmed.compare import attention_markdown, compare_runs
from lowmed.contracts import Comparison, ComparisonDir, StudyLog
from lowmed.experiment.report import headline_table, results_tables

ROOT = Path(__file__).parent.parent
STUDIES = sorted(path.name for path in (ROOT / "results").iterdir() if (path / StudyLog.FILE).is_file())


def test_both_public_data_studies_are_committed_with_the_wall_times_the_readme_gives():
    assert {"public-kermany", "public-ham10000"} <= set(STUDIES)
    minutes = {name: round(StudyLog.read(ROOT / "results" / name / StudyLog.FILE).seconds / 60) for name in STUDIES}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"Kermany took {minutes['public-kermany']} min and HAM10000 {minutes['public-ham10000']} min" in readme


@pytest.mark.parametrize("name", STUDIES)
def test_the_reported_tables_are_what_the_runs_give(name, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the runs are recorded by their path in the repository
    published = Path("results") / name
    recorded = Comparison.read(ComparisonDir(published).record)
    again = compare_runs([published / "runs"], out=tmp_path, quiet=True, evaluate_missing=False, **recorded.options())

    for table in ("compare.csv", "stats.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(published / table), pd.read_csv(tmp_path / table))
    report = (published / "report.md").read_text(encoding="utf-8")
    headline = headline_table(again)
    assert results_tables(again) in report
    assert headline in report
    assert headline in (ROOT / "README.md").read_text(encoding="utf-8")
    assert not [path for path in published.rglob("*.pt")]  # the small files only


def test_the_readme_attention_table_is_the_published_comparisons():
    """results/quickstart-attention: `lowmed compare --explain occlusion` of the quickstart study (its checkpoints are
    not committed, so the maps cannot be made again here; the numbers shown must be the ones it wrote)."""
    published = ROOT / "results" / "quickstart-attention"
    record = Comparison.read(ComparisonDir(published).record)
    arms = pd.read_csv(ComparisonDir(published).explanations("occlusion") / "arms.csv")
    assert record.attention == json.loads(arms.to_json(orient="records")) and len(arms) == 6
    section = attention_markdown(record.attention)
    assert section in (published / "compare.md").read_text(encoding="utf-8")
    table = "\n".join(line for line in section.splitlines() if line.startswith("|"))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert table in readme
    grids = list(ComparisonDir(published).explanations("occlusion").glob("*.png"))
    assert len(grids) == 1 and f"results/quickstart-attention/explain/occlusion/{grids[0].name}" in readme
