"""The committed studies in results/: the tables in each report.md and in the README are what lowmed's own compare
code makes of the per-run files behind them, so the numbers shown can never drift from the runs (no training)."""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from lowmed.comparison.compare import compare_runs, planned_power
from lowmed.comparison.render import attention_markdown, headline_table, seeds_table
from lowmed.contracts import PRIMARY, PRIMARY_TEST, Comparison, ComparisonDir, StudyLog, TestFamilies
from lowmed.experiment.portable import absolute_paths
from lowmed.experiment.report import results_tables

ROOT = Path(__file__).parent.parent
STUDIES = sorted(path.name for path in (ROOT / "results").iterdir() if (path / StudyLog.FILE).is_file())
# every published study record: results/ and the studies behind benchmarks' figures
PUBLISHED = sorted(
    str(path.parent.relative_to(ROOT))
    for folder in ("results", "benchmarks/results")
    for path in (ROOT / folder).glob(f"*/{StudyLog.FILE}")
)


PUBLIC = {"public-kermany": "Kermany", "public-ham10000": "HAM10000", "public-resolution": "resolution check"}


def test_the_public_data_studies_are_committed_with_the_wall_times_the_readme_gives():
    assert set(PUBLIC) <= set(STUDIES)
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    for name, label in PUBLIC.items():
        minutes = round(StudyLog.read(ROOT / "results" / name / StudyLog.FILE).seconds / 60)
        report = (ROOT / "results" / name / "report.md").read_text(encoding="utf-8")
        incomplete = re.search(r"\*\*Incomplete: \d+ of \d+ runs\.\*\*", report)
        assert f"{label}: {minutes} min {'so far' if incomplete else 'in all'}" in readme
        if incomplete:  # a partial record says so wherever its tables are shown
            assert incomplete.group(0) in readme


@pytest.mark.parametrize("name", PUBLISHED)
def test_the_reported_tables_are_what_the_runs_give(name, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the runs are recorded by their path in the repository
    published = Path(name)
    recorded = Comparison.read(ComparisonDir(published).record)
    again = compare_runs([published / "runs"], out=tmp_path, evaluate_missing=False, **recorded.options())

    for table in ("compare.csv", "stats.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(published / table), pd.read_csv(tmp_path / table))
    report = (published / "report.md").read_text(encoding="utf-8")
    headline = headline_table(again).markdown(title=False)
    assert results_tables(again) in report
    assert headline in report
    assert headline in (ROOT / "README.md").read_text(encoding="utf-8")
    assert not [path for path in published.rglob("*.pt")]  # the small files only


def test_the_readme_seeds_table_is_the_kermany_studys_variances():
    published = ROOT / "results" / "public-kermany"
    families = TestFamilies.read(published / TestFamilies.FILE)
    seeds = len(yaml.safe_load((published / "study.yaml").read_text())["seeds"])
    plan = planned_power(Comparison.read(published / Comparison.FILE), seeds, families.size(PRIMARY), None, "AUROC")
    assert seeds_table(plan).markdown(title=False) in (ROOT / "README.md").read_text(encoding="utf-8")


def _quoted(text: str) -> set[str]:
    """The three-decimal numbers of a text, without their signs."""
    return {number.lstrip("+-−") for number in re.findall(r"[−+-]?\d\.\d{3}", text)}


def test_the_readme_prose_quotes_only_numbers_of_the_published_tables():
    """What the public studies say, and how many seeds they need, in words: every number quoted is one of the tables
    lowmed makes of the records (the headline tables, the seeds table), so the prose cannot drift from the runs."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    kermany = ROOT / "results" / "public-kermany"
    tables = [headline_table(Comparison.read(ROOT / "results" / name / Comparison.FILE)).markdown() for name in STUDIES]
    seeds = len(yaml.safe_load((kermany / "study.yaml").read_text())["seeds"])
    family = TestFamilies.read(kermany / TestFamilies.FILE).size(PRIMARY)
    tables.append(
        seeds_table(planned_power(Comparison.read(kermany / Comparison.FILE), seeds, family, None, "AUROC")).markdown()
    )
    shown = set().union(*map(_quoted, tables))
    for opening in ("**What this says.**", "So on this pack three seeds"):
        start = readme.index(opening)
        paragraph = readme[start : readme.index("\n\n", start)]
        assert _quoted(paragraph) and _quoted(paragraph) <= shown, (opening, _quoted(paragraph) - shown)


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


def test_the_readme_sentence_on_the_other_saliency_methods_is_their_published_files():
    """The quickstart study explained by the two methods its record does not show: the README's sentence about them
    is read off their arms.csv."""
    published = ComparisonDir(ROOT / "results" / "quickstart-attention")
    integrated = pd.read_csv(published.explanations("integrated-gradients") / "arms.csv")
    gradcam = pd.read_csv(published.explanations("gradcam") / "arms.csv")
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    rho = integrated["rank_correlation_randomised"]
    assert integrated["flagged"].all() and len(integrated) == len(gradcam) == 6
    assert f"(ρ {rho.min():.2f}–{rho.max():.2f} against a reference of {integrated['reference'].iloc[0]:.2f})" in readme
    hits, images = gradcam["hits"], gradcam["images"].iloc[0]
    zero = int((hits == 0).sum())
    assert f"in {hits.min()}–{hits.max()} of {images} images (0 in {zero} of {len(gradcam)} cells)" in readme


def _independent_primary(published: Path) -> pd.DataFrame:
    """The primary family's tests computed again from the published predictions.csv files with none of lowmed's
    code: scikit-learn's AUROC, a patient bootstrap of its own (stratified by class), the t with Satterthwaite
    df, Holm."""
    from scipy import stats as scipy_stats
    from sklearn.metrics import roc_auc_score

    runs = {}
    for train in sorted(published.glob("runs/*/train.json")):
        summary = json.loads(train.read_text())
        table = pd.read_csv(train.parent / "eval" / "test" / "predictions.csv").sort_values("path")
        runs[(summary["arm"], summary["dataset"]["per_class"], summary["seed"])] = table.reset_index(drop=True)
    first = next(iter(runs.values()))
    classes = [column.removeprefix("prob:") for column in first.columns if column.startswith("prob:")]
    truth = first["label"].map({name: k for k, name in enumerate(classes)}).to_numpy()
    groups = pd.factorize(first["group"])[0]
    members = [np.flatnonzero(groups == g) for g in range(groups.max() + 1)]
    strata = [[g for g in range(len(members)) if truth[members[g][0]] == k] for k in range(len(classes))]
    rng = np.random.default_rng(2026)  # whole patients (lesions) drawn with replacement, as many of each class
    resampled_rows = [
        np.concatenate([members[g] for stratum in strata for g in rng.choice(stratum, len(stratum))])
        for _ in range(300)
    ]
    weights = np.array([np.bincount(rows, minlength=len(truth)) for rows in resampled_rows])  # a row's copies
    one_vs_rest = range(1, 2) if len(classes) == 2 else range(len(classes))

    def auroc(table):
        """scikit-learn's AUROC on the full test set."""
        scores = table[[f"prob:{c}" for c in classes]].to_numpy()
        if len(classes) == 2:
            return roc_auc_score(truth, scores[:, 1])
        return roc_auc_score(truth, scores, multi_class="ovr", average="macro", labels=range(len(classes)))

    def weighted_auroc(score: np.ndarray, positive: np.ndarray) -> np.ndarray:
        """The Mann–Whitney AUROC (ties count a half) of every resample at once, each row weighted by its copies."""
        order = np.argsort(score, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(score[order]) != 0])  # one block per distinct score
        pos = np.add.reduceat(weights[:, order] * positive[order], starts, axis=1)
        neg = np.add.reduceat(weights[:, order] * ~positive[order], starts, axis=1)
        below = np.cumsum(neg, axis=1) - neg  # negatives scored strictly lower
        return (pos * (below + neg / 2)).sum(axis=1) / (pos.sum(axis=1) * neg.sum(axis=1))

    resampled: dict[tuple, np.ndarray] = {}  # per run, its AUROC on every resample (a baseline run serves many pairs)

    def on_resamples(run: tuple) -> np.ndarray:
        if run not in resampled:
            scores = runs[run][[f"prob:{c}" for c in classes]].to_numpy()
            resampled[run] = np.mean([weighted_auroc(scores[:, k], truth == k) for k in one_vs_rest], axis=0)
        return resampled[run]

    families = json.loads((published / "families.json").read_text())
    rows = []
    for member in families["primary"]:
        a, b = (member[k].split(" · ")[0] for k in ("a", "b"))
        n = member["per_class"]
        seeds = sorted(seed for arm, size, seed in runs if arm == a and size == n and (b, n, seed) in runs)
        if len(seeds) < 2:  # a partial record: the pair is not tested until both arms have two seeds
            continue
        per_seed = np.array([auroc(runs[(a, n, s)]) - auroc(runs[(b, n, s)]) for s in seeds])
        draws = np.mean([on_resamples((a, n, s)) - on_resamples((b, n, s)) for s in seeds], axis=0)
        seed_term = per_seed.var(ddof=1) / len(seeds)
        variance = np.var(draws, ddof=1) + seed_term
        df = variance**2 / (seed_term**2 / (len(seeds) - 1))
        p = 2 * scipy_stats.t.sf(abs(per_seed.mean()) / np.sqrt(variance), df)
        rows.append({"per_class": member["per_class"], "a": member["a"], "estimate": per_seed.mean(), "p": p})
    frame = pd.DataFrame(rows, columns=["per_class", "a", "estimate", "p"])
    order = np.argsort(frame["p"].to_numpy())
    adjusted, running = np.empty(len(frame)), 0.0
    size = len(families["primary"])  # the family fixed by the plan: a pair not tested yet counts, as with p = 1
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (size - rank) * frame["p"].iloc[index]))
        adjusted[index] = running
    return frame.assign(p_holm=adjusted)


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_the_published_decisions_agree_with_an_independent_computation(name):
    published = ROOT / "results" / name
    mine = _independent_primary(published)
    stats = pd.read_csv(published / "stats.csv")
    primary = stats[(stats["test"] == PRIMARY_TEST) & (stats["family"] == PRIMARY) & (stats["seeds"] >= 2)]
    theirs = primary.set_index(["per_class", "a"])
    assert len(mine) == len(theirs)
    for row in mine.itertuples():
        published_row = theirs.loc[(row.per_class, row.a)]
        assert row.estimate == pytest.approx(published_row["estimate"], abs=1e-9)
        if not 0.03 < row.p_holm < 0.08:  # a bootstrap of its own may move a borderline p across 0.05
            assert (row.p_holm < 0.05) == bool(published_row["significant"]), (row, published_row)
        assert row.p_holm == pytest.approx(published_row["p_holm"], rel=0.3, abs=0.01)


def test_no_published_file_holds_an_absolute_path_of_the_machine_that_made_it():
    found = {}
    folders = [ROOT / "results", *(ROOT / name for name in PUBLISHED)]  # every published record
    for path in (path for folder in folders for path in folder.rglob("*")):
        if path.is_file() and path.suffix in (".json", ".yaml", ".md", ".csv"):
            paths = absolute_paths(path.read_text(encoding="utf-8"))
            if paths:
                found[str(path.relative_to(ROOT))] = paths[:2]
    assert not found
