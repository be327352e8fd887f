"""The comparison's primary test carries the variance between seeds as well as the test set's: checked on
synthetic predictions whose per-seed differences are set, against a hand computation, and with the families fixed
by a study."""

import math
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from lowmed.cli import main
from lowmed.comparison.compare import compare_runs
from lowmed.comparison.render import headline_table
from lowmed.comparison.statistics import (
    VarianceComponents,
    components,
    floored_p,
    minimum_detectable_difference,
    satterthwaite_df,
    two_level_bootstrap,
)
from lowmed.contracts import (
    PRIMARY,
    PRIMARY_TEST,
    DatasetRef,
    EvalReport,
    FamilyMember,
    RunDir,
    TestFamilies,
    TrainSummary,
    WeightsReport,
)
from lowmed.evaluation.metrics import binary_auroc

CLASSES = ["NORMAL", "PNEUMONIA"]
IMAGES = 3000  # a large test set: its own variance is small next to the seeds'


def _labels() -> np.ndarray:
    return np.arange(IMAGES) % 2


def _scores(separation: float, seed: int) -> np.ndarray:
    """Binormal scores whose AUROC is about Φ(separation / √2)."""
    rng = np.random.default_rng(seed)
    return 1 / (1 + np.exp(-(_labels() * separation + rng.normal(0, 1, IMAGES))))


def _separation(auroc: float) -> float:
    return math.sqrt(2) * scipy_stats.norm.ppf(auroc)


def write_run(folder, arm: str, seed: int, per_class: int, scores: np.ndarray) -> RunDir:
    """A finished, evaluated run made of its small files only: train.json, metrics.json and predictions.csv."""
    run = RunDir(folder)
    run.path.mkdir(parents=True)
    labels = _labels()
    TrainSummary(
        run_dir=str(run.path),
        created="2026-12-02T00:00:00+00:00",
        arm=arm,
        model="simplecnn",
        parameters=1,
        weights=WeightsReport(source="none"),
        weight_source="none",
        dataset=DatasetRef(
            prepared_dir="synthetic", task="binary", classes=CLASSES, manifest_sha256="0" * 64, per_class=per_class
        ),
        seed=seed,
        preprocessing={"input_size": 32},
        device="cpu",
        device_name="cpu",
        status="completed",
        best={"epoch": 1, "phase": "scratch", "monitor": "val_loss", "value": 0.1, "metrics": {"val_auroc": 0.9}},
    ).write(run.summary)
    evaluation = run.evaluation("test")
    evaluation.path.mkdir(parents=True)
    predicted = np.where(scores >= 0.5, CLASSES[1], CLASSES[0])
    pd.DataFrame(
        {
            "path": [f"/data/test/{k:05d}.png" for k in range(IMAGES)],
            "group": [f"patient{k // 2}" for k in range(IMAGES)],
            "label": [CLASSES[y] for y in labels],
            "prob:NORMAL": 1 - scores,
            "prob:PNEUMONIA": scores,
            "predicted": predicted,
        }
    ).to_csv(evaluation.predictions, index=False)
    EvalReport(
        task="binary",
        split="test",
        n=IMAGES,
        classes=CLASSES,
        threshold=0.5,
        metrics={"auroc": binary_auroc(labels, scores), "accuracy": 0.0, "balanced_accuracy": 0.0},
        bootstrap={"unit": "patient"},
        dataset={"prepared_dir": "synthetic"},
    ).write(evaluation.metrics)
    return run


def _two_arms(root, differences: list[float], per_class: int = 50) -> None:
    """Arm A at AUROC 0.85 on every seed, arm B off it by ``differences`` (one per seed)."""
    for seed, difference in enumerate(differences):
        write_run(root / f"a-n{per_class}-seed{seed}", "A", seed, per_class, _scores(_separation(0.85), 100 + seed))
        b = _scores(_separation(0.85 + difference), 200 + seed)
        write_run(root / f"b-n{per_class}-seed{seed}", "B", seed, per_class, b)


def _primary(comparison):
    (row,) = [row for row in comparison.comparisons if row.test == PRIMARY_TEST]
    return row


def test_seeds_that_disagree_are_not_significant_and_seeds_that_agree_are(tmp_path):
    _two_arms(tmp_path / "disagree", [0.03, -0.02, -0.07])
    disagree = _primary(compare_runs([tmp_path / "disagree"], baseline="A", resamples=200))
    assert disagree.favours_a == 1 and disagree.favours_b == 2
    assert disagree.se_patient < 0.015 < 0.04 < disagree.sd_seed  # the test set's variance is tiny next to the seeds'
    assert disagree.seed_share > 0.9 and disagree.df < 3
    assert not disagree.significant and disagree.p > 0.3

    _two_arms(tmp_path / "agree", [0.03, 0.035, 0.025])
    agree = _primary(compare_runs([tmp_path / "agree"], baseline="A", resamples=200))
    assert agree.favours_a == 3 and agree.significant and agree.p < 0.01
    assert agree.ci_low > 0


def test_satterthwaite_df_and_p_against_a_hand_computation():
    """The published Kermany cell N = 50, B − A (../shared/FINDINGS.md): per-seed differences −0.115, −0.214, −0.104
    and a patient bootstrap SE of 0.016."""
    per_seed = np.array([-0.115, -0.214, -0.104])
    se_patient = 0.016
    mean = (-0.115 - 0.214 - 0.104) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in per_seed) / 2)
    seed_term = sd**2 / 3
    variance = se_patient**2 + seed_term
    df = variance**2 / (seed_term**2 / 2)
    p = 2 * scipy_stats.t.sf(abs(mean) / math.sqrt(variance), df)
    parts = VarianceComponents(float(per_seed.mean()), se_patient, float(per_seed.std(ddof=1)), 3)
    assert parts.df == pytest.approx(df) and round(parts.df, 1) == 2.9
    assert parts.p_value() == pytest.approx(p) and round(p, 3) == 0.035  # 0.21 once Holm-adjusted over 12
    half = scipy_stats.t.ppf(0.975, df) * math.sqrt(variance)
    assert parts.interval() == pytest.approx((mean - half, mean + half))
    assert satterthwaite_df(se_patient, 0.0, 3) == math.inf and satterthwaite_df(se_patient, 0.05, 1) == math.inf
    # pooled draws: the patient SE is their SD
    draws = np.random.default_rng(0).normal(mean, se_patient, 5000)
    assert components(per_seed, draws).se_patient == pytest.approx(se_patient, rel=0.05)


def test_bootstrap_p_values_are_floored_at_one_over_b_plus_one():
    assert floored_p(0.0, 999) == 0.001 and floored_p(0.3, 999) == 0.3 and floored_p(1.2, 10) == 1.0
    per_seed_draws = np.full((10, 999), 0.05) + np.random.default_rng(0).normal(0, 0.001, (10, 999))
    result = two_level_bootstrap(per_seed_draws, seed=0)
    assert result["p"] == pytest.approx(1 / 1000) and 0.04 < result["ci_low"] < result["ci_high"] < 0.06


def test_ten_seeds_add_the_two_level_bootstrap_as_a_sensitivity_check(tmp_path):
    differences = [0.02, 0.03, 0.01, 0.025, 0.015, 0.02, 0.03, 0.01, 0.02, 0.025]
    _two_arms(tmp_path / "runs", differences)
    comparison = compare_runs([tmp_path / "runs"], baseline="A", resamples=100)
    (two_level,) = comparison.tests("sensitivity")
    primary = _primary(comparison)
    assert two_level.seeds == 10 and two_level.estimate == primary.estimate
    assert two_level.p >= 1 / 101 and two_level.ci_low < primary.estimate < two_level.ci_high
    assert "Sensitivity check: two-level bootstrap" in (tmp_path / "runs" / "compare.md").read_text()


def test_the_holm_family_is_fixed_by_the_study_not_by_one_compare_call(tmp_path):
    """Four planned comparisons (two arms at two N); a compare call that holds the runs of one N still corrects
    over all four, and so gives the same Holm p as the call that holds them all."""
    study = tmp_path / "study"
    _two_arms(study / "runs" / "n50", [0.03, 0.035, 0.025], per_class=50)
    _two_arms(study / "runs" / "n100", [0.01, -0.01, 0.02], per_class=100)
    members = [
        FamilyMember(dataset="synthetic", per_class=n, a="B · simplecnn", b="A · simplecnn")
        for n in (50, 100, 150, 200)
    ]
    TestFamilies(source="study synthetic, fixed when planned", baseline="A", primary=members).write(
        study / TestFamilies.FILE
    )
    whole = compare_runs([study / "runs"], out=tmp_path / "whole", resamples=200)
    part = compare_runs([study / "runs" / "n50"], out=tmp_path / "part", resamples=200)
    found = compare_runs(
        [study / "runs" / "n50"],
        out=tmp_path / "found",
        resamples=200,
        families=TestFamilies(source="the runs compared", baseline="A", primary=members[:1]),
    )
    in_whole, in_part = (next(r for r in c.tests(PRIMARY) if r.per_class == 50) for c in (whole, part))
    assert in_part.p_holm == pytest.approx(in_whole.p_holm) == pytest.approx(min(1.0, 4 * in_whole.p))
    assert part.families.size(PRIMARY) == 4 and part.families.source.startswith("study synthetic")
    assert _primary(found).p_holm == pytest.approx(_primary(found).p)  # a family of one: no correction


def test_power_is_planned_from_the_runs_and_shown_by_compare(tmp_path, capsys):
    _two_arms(tmp_path / "runs", [0.03, -0.02, -0.07])
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(tmp_path / "runs"), "--baseline", "A", "--resamples", "100", "--power"])
    shown = capsys.readouterr().out
    assert exit_info.value.code == 0 and "Minimum detectable difference at 80 % power" in shown
    power = pd.read_csv(tmp_path / "runs" / "power.csv")
    row = power.iloc[0]
    assert list(power.filter(like="detectable_").columns) == [f"detectable_{n}_seeds" for n in (3, 5, 10, 20)]
    assert row["detectable_20_seeds"] < row["detectable_10_seeds"] < row["detectable_3_seeds"]
    assert row["detectable_3_seeds"] == pytest.approx(
        minimum_detectable_difference(row["se_patient"], row["sd_seed"], 3, 1)
    )
    # more seeds help only down to the test set's own limit
    floor = minimum_detectable_difference(row["se_patient"], 0.0, 1000, 1)
    assert floor < row["detectable_20_seeds"] and floor == pytest.approx(2.8 * row["se_patient"], rel=0.01)


def test_a_planned_pair_is_tested_as_the_study_wrote_it(tmp_path):
    """compare.pairs: the primary family's members read a − b as planned, whatever the names' order or baseline."""
    _two_arms(tmp_path / "runs", [0.03, 0.035, 0.025])
    member = FamilyMember(dataset="synthetic", per_class=50, a="B · simplecnn", b="A · simplecnn")
    families = TestFamilies(source="study resolution, fixed when planned", baseline=None, primary=[member])
    comparison = compare_runs([tmp_path / "runs"], resamples=100, families=families)
    row = _primary(comparison)
    assert (row.a, row.b, row.family, row.vs_baseline) == ("B · simplecnn", "A · simplecnn", PRIMARY, True)
    assert row.estimate > 0  # B − A, B being the better arm here
    headline = headline_table(comparison).markdown(title=False)
    assert "primary difference [95 % CI]" in headline and "− A: +0.0" in headline
    for run in (tmp_path / "runs").glob("b-*"):  # a partial record: one scratch arm finished, its pair not yet
        shutil.move(run, tmp_path / run.name)
    partial = compare_runs([tmp_path / "runs"], resamples=100, families=families)
    assert partial.baseline is None and "− A [95 % CI]" not in headline_table(partial).markdown(title=False)
