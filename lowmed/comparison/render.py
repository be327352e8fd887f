"""The comparison's tables, built once and shown three ways: on the terminal (rich), in ``compare.md`` and in a
study's ``report.md`` (Markdown). Every table says what kind of interval it shows and which test made its p."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from lowmed.comparison.statistics import PowerPlan
from lowmed.contracts import (
    DESCRIPTIVE,
    PRIMARY,
    PRIMARY_TEST,
    PRIMARY_TESTS,
    SECONDARY,
    SENSITIVITY,
    Comparison,
    Estimate,
    PowerRow,
    TestRow,
)

DETAIL_LABELS = {
    "balanced_accuracy": "balanced accuracy",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "ece": "ECE",
}
PRIMARY_METHOD = (
    "the mean over seeds of the per-seed difference on the full test set, tested with Var = SE_pat² + SD_seed²/n "
    "(SE_pat: {unit} bootstrap of the seed-averaged difference; SD_seed: SD of the per-seed differences) and a "
    "t reference with Welch–Satterthwaite df (Bouthillier et al. 2021; Satterthwaite 1946)"
)


@dataclass
class Table:
    """A table as rows of text: ``title`` above it, ``note`` below (Markdown: a paragraph each)."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""

    def markdown(self, title: bool = True, note: bool = True) -> str:
        lines = [f"{self.title}", ""] if title and self.title else []
        lines += ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if note and self.note:
            lines += ["", self.note]
        return "\n".join(lines)

    def section(self, level: str = "###") -> list[str]:
        """The table under a Markdown heading of its title."""
        return ["", f"{level} {self.title}", "", self.markdown(title=False)]

    def rich(self):
        """A rich Table; names and numbers never wrap (a narrow terminal folds the long free-text columns)."""
        from rich.table import Table as RichTable

        table = RichTable(title=self.title, title_justify="left", caption=self.note or None, caption_justify="left")
        for column in self.columns:
            wide_text = column in ("recipe", "per-seed differences")
            table.add_column(column, overflow="fold", no_wrap=not wide_text)
        for row in self.rows:
            table.add_row(*row)
        return table


def test_label(test: str) -> str:
    """A primary test by what its p carries: both sources of variance, or (in files compared before this test) the
    test set's alone, the trained models held fixed."""
    if test == PRIMARY_TEST:
        return "seeds + test set"
    return "test set only, seeds held fixed" if test in PRIMARY_TESTS else test


def fmt(value: float | None, digits: int = 3, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def format_p(p: float | None) -> str:
    if p is None or math.isnan(p):
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def interval_text(estimate: Estimate, sign: bool = False) -> str:
    return f"{fmt(estimate.mean, sign=sign)} [{fmt(estimate.ci_low, sign=sign)}, {fmt(estimate.ci_high, sign=sign)}]"


def difference_text(row: TestRow) -> str:
    return f"{fmt(row.estimate, sign=True)} [{fmt(row.ci_low, sign=True)}, {fmt(row.ci_high, sign=True)}]"


def metric_label(name: str) -> str:
    """A metric's name as prose reads it: macro_auroc → macro AUROC."""
    return DETAIL_LABELS.get(name) or name.replace("auroc", "AUROC").replace("auprc", "AUPRC").replace("_", " ")


def _df_text(df: float) -> str:
    return "∞" if math.isinf(df) else f"{df:.1f}"


def _n_text(per_class: int | None) -> str:
    return "all" if per_class is None else str(per_class)


def _pair(row: TestRow) -> list[str]:
    """A test's first cells: where it was made and which two arms it sets against each other."""
    return [row.dataset, _n_text(row.per_class), row.a, row.b]


def method_sentence(comparison: Comparison) -> str:
    return PRIMARY_METHOD.format(unit=comparison.unit)


def runs_table(comparison: Comparison) -> Table:
    """Every run's headline metric with its own bootstrap interval; ★ marks the best per dataset and N."""
    best: dict[tuple, float] = {}
    for row in comparison.runs:
        key = (row.dataset, row.per_class)
        best[key] = max(best.get(key, -math.inf), row.value)
    evaluated_on = f"external {comparison.external}" if comparison.external else comparison.split
    metric = comparison.runs[0].metric if comparison.runs else comparison.metric
    rows = [
        [
            row.dataset,
            row.entity,
            _n_text(row.per_class),
            str(row.seed),
            ("★ " if row.value == best[(row.dataset, row.per_class)] else "") + fmt(row.value),
            f"[{fmt(row.ci_low)}, {fmt(row.ci_high)}]",
            fmt(row.train_seconds, 0),
        ]
        for row in comparison.runs
    ]
    return Table(
        f"runs · {evaluated_on} · {metric} (★ best per dataset and N)",
        ["dataset", "arm · model", "N", "seed", "value", "95% CI (this run's test set)", "train s"],
        rows,
    )


def groups_table(comparison: Comparison) -> Table:
    """Each arm per N: the headline metric and the calls at the evaluations' threshold, mean [95 % interval]."""
    groups = comparison.groups
    keys = [key for key in comparison.by if any(getattr(g, key) is not None for g in groups)]
    details = [name for name in DETAIL_LABELS if any(name in g.thresholded for g in groups)]
    metric = metric_label(groups[0].metric) if groups else comparison.metric
    columns = [*(("N/class" if key == "per_class" else key) for key in keys), "seeds", f"{metric} [95 % CI]"]
    columns += ["SD seeds", "SE test set", *(f"{DETAIL_LABELS[name]} [95 % CI]" for name in details), "recipe"]
    rows = []
    for group in groups:
        row = [_n_text(group.per_class) if key == "per_class" else str(getattr(group, key)) for key in keys]
        row += [str(group.n), interval_text(group.value), fmt(group.value.sd_seed), fmt(group.value.se_patient)]
        row += [interval_text(group.thresholded[name]) if name in group.thresholded else "—" for name in details]
        rows.append([*row, group.recipe])
    kinds = sorted({group.interval for group in groups})
    sources = sorted({group.threshold_source for group in groups if group.threshold_source})
    note = f"Intervals: {'; '.join(kinds)}."
    if details:
        note += (
            f" Balanced accuracy, sensitivity and specificity are the calls at the evaluations' threshold "
            f"({'; '.join(sources)}); ECE: expected calibration error (10 bins), lower is better."
        )
    return Table("Each arm over seeds (mean [95 % interval])", columns, rows, note)


def tests_table(rows: list[TestRow], family: str, unit: str = "patient") -> Table:
    """The primary test of each pair in ``family``, with its parts."""
    columns = [
        "dataset",
        "N/class",
        "a",
        "b",
        "seeds",
        "per-seed differences",
        "favour a / b",
        "SD seeds",
        "SE test set",
        "seed share",
        "df",
        "a − b [95 % CI]",
        "p",
        "p (Holm)",
        "significant",
    ]
    body = [
        [
            *_pair(row),
            str(row.seeds),
            " ".join(fmt(d, sign=True) for d in row.per_seed),
            f"{row.favours_a} / {row.favours_b}",
            fmt(row.sd_seed),
            fmt(row.se_patient),
            fmt(row.seed_share, 2),
            _df_text(row.df),
            difference_text(row),
            format_p(row.p),
            format_p(row.p_holm),
            "yes" if row.significant else "no",
        ]
        for row in rows
    ]
    what = {
        PRIMARY: "Primary family: every arm against the baseline, over every N",
        SECONDARY: "Secondary family: the other pairs of arms",
    }[family]
    return Table(
        f"{what} (a − b; seeds + test set, t with Satterthwaite df; Holm within the family)",
        columns,
        body,
        f"SD seeds: of the per-seed differences; SE test set: {unit} bootstrap SE of the seed-averaged difference; "
        "seed share: the part of the variance that comes from seeds.",
    )


def sensitivity_table(rows: list[TestRow]) -> Table:
    columns = ["dataset", "N/class", "a", "b", "seeds", "a − b [95 % percentile CI]", "p (floored)", "p (Holm)"]
    body = [
        [
            *_pair(row),
            str(row.seeds),
            difference_text(row),
            format_p(row.p),
            format_p(row.p_holm),
        ]
        for row in rows
    ]
    return Table(
        "Sensitivity check: two-level bootstrap (seeds and patients resampled together)",
        columns,
        body,
        "p-values floored at 1/(B+1), the smallest that B resamples can show.",
    )


def descriptive_table(rows: list[TestRow]) -> Table:
    columns = ["dataset", "N/class", "a", "b", "test", "seed", "metric", "a − b", "p", "p (Holm within the test)"]
    body = [
        [
            *_pair(row),
            row.test,
            str(row.seed),
            row.metric,
            fmt(row.estimate, sign=True),
            format_p(row.p),
            format_p(row.p_holm),
        ]
        for row in rows
    ]
    return Table(
        "Descriptive, per seed: DeLong (AUROC) and McNemar (accuracy at the saved thresholds)",
        columns,
        body,
        "Each compares two single trained models on the test images, not two training pipelines: they leave out the "
        "variance between seeds and are no evidence for or against an arm. Not used in the conclusions.",
    )


def headline_table(comparison: Comparison) -> Table:
    """Per dataset and N, each arm's mean test metric over seeds with its interval, the primary test's difference
    to the baseline with its Holm-adjusted p, and its balanced accuracy with its interval."""
    primary: dict[tuple[str | None, int | None, str], TestRow] = {
        (row.dataset, row.per_class, row.a): row for row in comparison.tests(PRIMARY) if row.vs_baseline
    }
    baseline = comparison.baseline
    metric = metric_label(comparison.groups[0].metric)
    columns = [
        "dataset",
        "N/class",
        "arm",
        "seeds",
        f"test {metric}, mean [95 % CI]",
        f"− {baseline} [95 % CI]" if baseline else "primary difference [95 % CI]",
        "p (Holm)",
        "balanced accuracy [95 % CI]",
    ]
    rows = []
    groups = sorted(
        comparison.groups,
        key=lambda g: (g.dataset or "", g.per_class or 0, g.arm != baseline, g.arm or ""),
    )
    for group in groups:
        test = primary.get((group.dataset, group.per_class, group.entity))
        rows.append(
            [
                str(group.dataset),
                _n_text(group.per_class),
                str(group.arm),
                str(group.n),
                interval_text(group.value),
                (difference_text(test) if baseline else f"− {test.b.split(' · ')[0]}: {difference_text(test)}")
                if test
                else "—",
                format_p(test.p_holm) if test else "—",
                interval_text(group.thresholded["balanced_accuracy"])
                if "balanced_accuracy" in group.thresholded
                else "—",
            ]
        )
    sources = sorted({group.threshold_source for group in comparison.groups if group.threshold_source})
    family = comparison.families.size(PRIMARY) if comparison.families else len(primary)
    note = (
        f"Intervals: mean ± t·SE over seeds and the test set (SE² = SE_pat² + SD_seed²/n, Satterthwaite df). "
        f"Differences: {method_sentence(comparison)}; Holm over the primary family of {family} comparisons. "
        f"Balanced accuracy at the threshold: {'; '.join(sources) or '—'}."
    )
    return Table("", columns, rows, note)


def power_table(rows: list[PowerRow]) -> Table:
    counts = sorted({n for row in rows for n in row.detectable})
    columns = ["dataset", "N/class", "a", "b", "seeds", "SE test set", "SD seeds"]
    columns += [f"{n} seeds" for n in counts]
    body = [
        [
            row.dataset,
            _n_text(row.per_class),
            row.a,
            row.b,
            str(row.seeds),
            fmt(row.se_patient),
            fmt(row.sd_seed),
            *(fmt(row.detectable.get(n)) for n in counts),
        ]
        for row in rows
    ]
    size = rows[0].family_size if rows else 1
    return Table(
        "Minimum detectable difference at 80 % power",
        columns,
        body,
        f"Two-sided α 0.05 at Holm's first step over the primary family of {size} (α/{size}), t with Satterthwaite "
        "df, from each comparison's measured SE test set and SD seeds.",
    )


def seeds_table(plan: PowerPlan, seeds: tuple[int, ...] = (3, 5, 10, 20)) -> Table:
    """How the smallest detectable difference falls with more seeds, down to the test set's own limit, for one
    study's measured SE_pat and SD_seed."""
    rows = []
    for count in (*seeds, None):
        planned = replace(plan, seeds=count or 10**9)
        rows.append(
            [
                "test set's limit" if count is None else str(count),
                fmt(planned.unadjusted),
                fmt(planned.detectable),
            ]
        )
    return Table(
        f"Minimum detectable difference in {plan.metric} at 80 % power",
        ["seeds", "one test (α 0.05)", f"Holm over {plan.family_size} (α/{plan.family_size})"],
        rows,
        f"SE test set {plan.se_patient:.3f}, SD between seeds {plan.sd_seed:.3f} ({plan.source}).",
    )


def paired_tables(comparison: Comparison) -> list[Table]:
    """The primary test of the primary family, then of the secondary one, then (ten or more seeds) the two-level
    bootstrap beside it."""
    tables = [
        tests_table(comparison.tests(family), family, comparison.unit)
        for family in (PRIMARY, SECONDARY)
        if comparison.tests(family)
    ]
    if comparison.tests(SENSITIVITY):
        tables.append(sensitivity_table(comparison.tests(SENSITIVITY)))
    return tables


def comparison_markdown(comparison: Comparison) -> str:
    """``compare.md``: the notes, each arm over seeds, every family of tests, then the per-seed tests."""
    title = f"# lowmed compare — {comparison.metric}" + (
        f", on the external test set {comparison.external}" if comparison.external else ""
    )
    notes = [text for text in (comparison.recipes, comparison.overlap, comparison.learning) if text]
    against = (
        f"every other arm against the baseline arm {comparison.baseline} (b), then the remaining pairs"
        if comparison.baseline
        else "every pair of arms; no baseline arm"
    )
    families = comparison.families
    source = f"Families of tests: {families.source}." if families else ""
    lines = [title, "", *(f"{note}\n" for note in notes)]
    lines += groups_table(comparison).section("##")[1:] + [""]
    lines += [f"## Paired comparisons (a − b): {against}", "", f"Primary test: {method_sentence(comparison)}. {source}"]
    for table in paired_tables(comparison):
        lines += table.section()
    if comparison.tests(DESCRIPTIVE):
        lines += descriptive_table(comparison.tests(DESCRIPTIVE)).section("##")
    lines += ["", f"{len(comparison.runs)} runs."]
    return "\n".join(lines) + "\n" + attention_markdown(comparison.attention)


def attention_table(attention: list[dict]) -> Table:
    """Per arm and N: the pointing game and the model-randomisation check of its saliency maps."""
    from lowmed.saliency.maps import UNCHANGED_CORRELATION

    columns = ["dataset", "N/class", "arm", "model", "images", "pointing game [chance]", "ρ randomised (reference)"]
    rows = [
        [
            str(row["dataset"]),
            str(row["per_class"] or "all"),
            str(row["arm"]),
            str(row["model"]),
            str(row["images"]),
            "—"
            if row["hits"] is None
            else f"{row['hits']}/{row['images']} = {row['pointing_game']:.2f} [{row['chance']:.2f}]",
            f"{fmt(row['rank_correlation_randomised'], 2)} ({fmt(row['reference'], 2)})",
            "yes" if row["flagged"] else "no",
        ]
        for row in attention
    ]
    method, seeds = attention[0]["method"], sorted({row["seed"] for row in attention})
    return Table(
        f"What each arm looks at ({method})",
        [*columns, "flagged"],
        rows,
        f"The same test images explained by every arm at seed {', '.join(map(str, seeds))}: one grid per image in "
        f"explain/{method}/. Pointing game: the share of images whose map peaks inside a lesion box (chance: the "
        "share of the image the boxes cover). Randomisation: the rank correlation ρ of the arm's maps with those of "
        "the same network re-initialised (two re-initialised networks: the reference); maps at "
        f"|ρ| ≥ {UNCHANGED_CORRELATION} barely depend on what was learned.",
    )


def attention_markdown(attention: list[dict]) -> str:
    """compare.md's section on ``--explain``."""
    if not attention:
        return ""
    table = attention_table(attention)
    lines = ["", f"## {table.title}", "", table.note, "", table.markdown(title=False, note=False)]
    return "\n".join(lines) + "\n"
