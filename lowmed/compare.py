"""``lowmed compare``: runs side by side, aggregated over seeds, with paired tests between arms.

Arms: A = from scratch (``--weights none``), B = ImageNet, C = another model's weights (a medical pretraining run
or an external medical checkpoint). Two arms are compared where they were evaluated on the same test images of
the same dataset at the same per-class N; seeds pair up, since one seed draws the same training subset for every
arm. The primary test of a pair is a paired bootstrap over patients of the seed-averaged metric difference; DeLong
(AUROC, binary tasks) and McNemar (accuracy at the saved thresholds) are reported per seed. Each family of tests
is Holm-corrected.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from lowmed.console import track, warn
from lowmed.data.loading import label_tensors
from lowmed.data.manifest import read_info
from lowmed.errors import LowmedError
from lowmed.evaluation.evaluate import METRICS_JSON, evaluate
from lowmed.evaluation.metrics import accuracy, auroc, compute_metrics
from lowmed.evaluation.plots import plot_learning_curves
from lowmed.evaluation.stats import delong_test, holm_by_family, mcnemar_test, paired_bootstrap
from lowmed.io import write_csv, write_json, write_text
from lowmed.training.train import SUMMARY

ARMS = {"none": "A scratch", "imagenet": "B ImageNet", "run": "C medical", "file": "C medical"}
ALPHA = 0.05


@dataclass
class Run:
    """One completed run with its evaluation on the compared split."""

    path: Path
    summary: dict  # train.json
    report: dict  # metrics.json
    predictions: pd.DataFrame

    @property
    def arm(self) -> str:
        return ARMS.get(self.summary["weight_source"], self.summary["weight_source"])

    @property
    def dataset(self) -> str:
        return Path(self.summary["dataset"]["prepared_dir"]).name

    @property
    def entity(self) -> str:
        return f"{self.arm} · {self.summary['model']}"

    @cached_property
    def table(self) -> pd.DataFrame:
        """predictions.csv sorted by path: the row order every paired comparison uses."""
        return _by_path(self.predictions)

    @cached_property
    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Targets, probabilities and loss mask, in ``table`` order."""
        return _prediction_arrays(self.table, self.report, self.summary["dataset"]["prepared_dir"])

    @cached_property
    def correct(self) -> np.ndarray | None:
        return _correct_calls(self.table, self.report["task"])


def _by_path(predictions: pd.DataFrame) -> pd.DataFrame:
    return predictions.sort_values("path", kind="stable").reset_index(drop=True)


def _correct_calls(table: pd.DataFrame, task: str) -> np.ndarray | None:
    """Whether each saved call (at the evaluation's threshold) was right; multi-label predictions make none."""
    return None if task == "multilabel" else (table["predicted"] == table["label"]).to_numpy()


def _prediction_arrays(table: pd.DataFrame, report: dict,
                       prepared_dir: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Targets, probabilities and (multi-label) loss mask from a predictions table and its metrics.json."""
    task, classes = report["task"], report["classes"]
    probs = table[[f"prob:{c}" for c in classes]].to_numpy(dtype=float)
    if task == "multilabel":
        truth = table[[f"true:{c}" for c in classes]].set_axis(classes, axis=1)
        targets, mask = label_tensors(truth, task, classes, read_info(prepared_dir).get("uncertain", "ignore"))
        return targets.numpy(), probs, mask.numpy()
    targets, _ = label_tensors(table, task, classes)
    return targets.numpy(), probs, None


def headline_name(task: str, metric: str) -> str:
    """``auroc`` means the task's headline AUROC: binary, macro one-vs-rest, or mean over findings."""
    if metric == "auroc":
        return {"binary": "auroc", "multiclass": "macro_auroc", "multilabel": "mean_auroc"}[task]
    return metric


def discover_runs(paths: list[str | os.PathLike]) -> list[Path]:
    found = []
    for path in map(Path, paths):
        if not path.exists():
            raise LowmedError(f"{path}: no such folder of runs")
        found += [summary.parent for summary in sorted(path.rglob(SUMMARY))]
    return sorted(set(found))


def load_runs(run_dirs: list[Path], split: str, evaluate_missing: bool, bootstrap: int,
              quiet: bool) -> tuple[list[Run], list[dict]]:
    """Completed runs with their evaluations (made on the fly where missing), and the runs left out, with why."""
    runs, skipped = [], []
    for run_dir in run_dirs:
        summary = json.loads((run_dir / SUMMARY).read_text())
        if summary.get("status") != "completed":
            skipped.append({"run": str(run_dir), "reason": f"status {summary.get('status')!r}, not completed"})
            continue
        folder = run_dir / "eval" / split
        if not (folder / METRICS_JSON).is_file():
            if not evaluate_missing:
                skipped.append({"run": str(run_dir), "reason": f"no evaluation on {split}; "
                                f"run: lowmed evaluate {run_dir} --split {split}"})
                continue
            evaluate(run_dir, split=split, bootstrap=bootstrap, quiet=quiet)
        report = json.loads((folder / METRICS_JSON).read_text())
        runs.append(Run(run_dir, summary, report, pd.read_csv(folder / "predictions.csv")))
    return runs, skipped


def _metric_on(task: str, classes: list[str], name: str, targets, probs, mask, threshold) -> float:
    """One metric on (resampled) predictions; the AUROCs and multi-class accuracy by their fast paths."""
    if name in ("auroc", "macro_auroc", "mean_auroc"):
        return auroc(task, targets, probs, mask)
    if name == "accuracy" and task == "multiclass":
        return accuracy(task, targets, probs)
    return compute_metrics(task, classes, targets, probs, mask, threshold).metrics[name]


def compare_runs(paths: list[str | os.PathLike], *, split: str = "test", metric: str = "auroc",
                 by: tuple[str, ...] = ("dataset", "arm", "model", "per_class"), out: str | os.PathLike | None = None,
                 evaluate_missing: bool = True, bootstrap: int = 2000, resamples: int = 1000, seed: int = 0,
                 quiet: bool = False) -> dict:
    """Compare every completed run below ``paths``; write compare.csv/json/md, stats.csv and learning curves."""
    known = {"dataset", "arm", "model", "per_class", "seed", "weights"}
    if set(by) - known:
        raise LowmedError(f"--by {','.join(by)}: expected fields among {', '.join(sorted(known))}")
    runs, skipped = load_runs(discover_runs(paths), split, evaluate_missing, bootstrap, quiet)
    if not runs:
        raise LowmedError(f"no completed, evaluated runs found below {', '.join(map(str, paths))}")
    for item in skipped:
        warn(f"{item['run']} left out: {item['reason']}")
    table = _runs_table(runs, metric)
    groups = _aggregate(table, list(by))
    tests = _paired_tests(runs, metric, resamples, seed, quiet)
    out = Path(out or paths[0])
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "compare.csv", table)
    write_csv(out / "stats.csv", tests)
    curves = _aggregate(table.dropna(subset=["per_class"]), ["dataset", "arm", "model", "per_class"])
    figures = plot_learning_curves(out, curves)
    result = {"split": split, "metric": metric, "runs": table.to_dict("records"), "groups": groups.to_dict("records"),
              "comparisons": tests.to_dict("records"), "skipped": skipped, "figures": [str(f) for f in figures],
              "out": str(out)}
    write_json(out / "compare.json", result)
    write_text(out / "compare.md", markdown_report(table, groups, tests, metric))
    return result


def _runs_table(runs: list[Run], metric: str) -> pd.DataFrame:
    rows = []
    for run in runs:
        name = headline_name(run.report["task"], metric)
        if name not in run.report["metrics"]:
            raise LowmedError(f"--metric {metric}: {run.path} has no such metric; "
                              f"it has {', '.join(run.report['metrics'])}")
        low, high = run.report["ci95"].get(name) or [np.nan, np.nan]
        rows.append({
            "run": str(run.path), "dataset": run.dataset, "task": run.report["task"], "arm": run.arm,
            "model": run.summary["model"], "weights": run.summary["weights"]["path"] or run.summary["weight_source"],
            "per_class": run.summary["dataset"]["per_class"], "seed": run.summary["seed"], "metric": name,
            "value": run.report["metrics"][name], "ci_low": low, "ci_high": high,
            "accuracy": run.report["metrics"].get("accuracy", np.nan), "n_test": run.report["n"],
            "train_seconds": run.summary.get("epoch_seconds_total", np.nan), "epochs": run.summary["epochs_run"],
        })
    return pd.DataFrame(rows).sort_values(["dataset", "per_class", "arm", "model", "seed"], na_position="first")


def _aggregate(table: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean, SD, n and a t-interval of the mean over seeds (the run's own bootstrap interval when n = 1)."""
    rows = []
    for keys, part in table.groupby(by, dropna=False, sort=True):
        values = part["value"].to_numpy(dtype=float)
        n = len(values)
        mean, sd = float(values.mean()), float(values.std(ddof=1)) if n > 1 else float("nan")
        if n > 1:  # every metric compared here lies in [0, 1]; a t-interval of few seeds can overshoot that
            half = scipy_stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n)
            low, high, kind = max(0.0, mean - half), min(1.0, mean + half), "t over seeds"
        else:
            low, high, kind = part["ci_low"].iloc[0], part["ci_high"].iloc[0], "bootstrap (one run)"
        rows.append({**dict(zip(by, keys if isinstance(keys, tuple) else (keys,))), "metric": part["metric"].iloc[0],
                     "mean": mean, "sd": sd, "n": n, "ci_low": low, "ci_high": high, "interval": kind,
                     "train_seconds": float(part["train_seconds"].mean())})
    return pd.DataFrame(rows)


def _paired_tests(runs: list[Run], metric: str, resamples: int, seed: int, quiet: bool) -> pd.DataFrame:
    """Every pair of arms/models on the same dataset, N and test images; Holm within each family of tests."""
    cells: dict[tuple, dict[str, dict[int, Run]]] = {}
    for run in runs:
        key = (run.dataset, run.summary["dataset"]["per_class"], run.report["split"])
        cells.setdefault(key, {}).setdefault(run.entity, {})[run.summary["seed"]] = run
    jobs = [(key, a, b) for key, entities in cells.items() for a, b in combinations(sorted(entities), 2)]
    rows = []
    for key, a, b in track(jobs, len(jobs), "Paired tests", quiet):
        by_seed_a, by_seed_b = cells[key][a], cells[key][b]
        pairs = [(by_seed_a[s], by_seed_b[s]) for s in sorted(set(by_seed_a) & set(by_seed_b))]
        pairs = [(x, y) for x, y in pairs if x.table["path"].equals(y.table["path"])]
        if pairs:
            rows += _tests_for_pair(key[0], key[1], a, b, pairs, metric, resamples, seed)
    tests = pd.DataFrame(rows, columns=["dataset", "per_class", "a", "b", "test", "seeds", "metric", "estimate",
                                        "ci_low", "ci_high", "p"])
    tests["p_holm"] = holm_by_family(tests["p"].tolist(), tests["test"].tolist())
    tests["significant"] = tests["p_holm"] < ALPHA
    return tests.sort_values(["dataset", "per_class", "a", "b", "test", "seeds"], kind="stable").reset_index(drop=True)


def _tests_for_pair(dataset, per_class, a: str, b: str, pairs: list[tuple[Run, Run]], metric: str,
                    resamples: int, seed: int) -> list[dict]:
    task, classes = pairs[0][0].report["task"], pairs[0][0].report["classes"]
    name = headline_name(task, metric)
    arrays = [(x.arrays, y.arrays, x.report["threshold"], y.report["threshold"]) for x, y in pairs]
    (targets, _, mask), _, _, _ = arrays[0]
    groups = pairs[0][0].table["group"].to_numpy()
    strata = targets if task != "multilabel" else (targets > 0).any(axis=1)

    def seed_averaged_difference(indices: np.ndarray) -> float:
        differences = [
            _metric_on(task, classes, name, ta[indices], pa[indices], None if ma is None else ma[indices], cut_a)
            - _metric_on(task, classes, name, tb[indices], pb[indices], None if mb is None else mb[indices], cut_b)
            for (ta, pa, ma), (tb, pb, mb), cut_a, cut_b in arrays]
        return float(np.mean(differences))

    base = {"dataset": dataset, "per_class": per_class, "a": a, "b": b, "metric": name}
    everything = np.arange(len(targets))
    estimate = seed_averaged_difference(everything)
    boot = paired_bootstrap(seed_averaged_difference, groups, np.asarray(strata), resamples, seed)
    rows = [{**base, "test": "paired bootstrap (seed-averaged)", "seeds": len(pairs), "estimate": estimate, **boot}]
    for (x, y), ((tx, px, _), (_, py, _), _, _) in zip(pairs, arrays):
        for test, test_metric, result in _per_seed_tests(task, tx, px, py, x.correct, y.correct):
            rows.append({**base, "metric": test_metric, "test": test, "seeds": x.summary["seed"],
                         "estimate": result["difference"], "ci_low": np.nan, "ci_high": np.nan, "p": result["p"]})
    return rows


def _per_seed_tests(task: str, targets: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray,
                    correct_a: np.ndarray | None, correct_b: np.ndarray | None) -> list[tuple[str, str, dict]]:
    """(test, metric, result) for two models on the same images: DeLong on binary AUROC, exact McNemar on the
    saved calls (single-label tasks)."""
    tests = []
    if task == "binary":
        tests.append(("DeLong", "auroc", delong_test(targets, probs_a[:, 1], probs_b[:, 1])))
    if task != "multilabel":
        tests.append(("McNemar", "accuracy", mcnemar_test(correct_a, correct_b)))
    return tests


def _fmt(value: float, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def format_p(p: float) -> str:
    if p is None or np.isnan(p):
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def markdown_report(table: pd.DataFrame, groups: pd.DataFrame, tests: pd.DataFrame, metric: str) -> str:
    lines = [f"# lowmed compare — {metric}", "", "## Groups (mean over seeds, 95 % interval)", ""]
    columns = [c for c in groups.columns if c not in ("metric", "ci_low", "ci_high", "interval", "sd", "mean")]
    lines.append("| " + " | ".join([*columns, "metric", "mean [95 % CI]", "SD"]) + " |")
    lines.append("|" + "---|" * (len(columns) + 3))
    for row in groups.to_dict("records"):
        lines.append("| " + " | ".join([*(str(row[c]) if not isinstance(row[c], float) else _fmt(row[c], 1)
                                          for c in columns), row["metric"],
                                        f"{_fmt(row['mean'])} [{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}]",
                                        _fmt(row["sd"])]) + " |")
    lines += ["", "## Paired comparisons (a − b; Holm-adjusted within each test)", "",
              "| dataset | N/class | a | b | test | seeds | metric | difference [95 % CI] | p | p (Holm) | significant |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in tests.to_dict("records"):
        interval = "" if np.isnan(row["ci_low"]) else f" [{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}]"
        lines.append(f"| {row['dataset']} | {row['per_class']} | {row['a']} | {row['b']} | {row['test']} | "
                     f"{row['seeds']} | {row['metric']} | {_fmt(row['estimate'])}{interval} | {format_p(row['p'])} | "
                     f"{format_p(row['p_holm'])} | {'yes' if row['significant'] else 'no'} |")
    lines += ["", f"{len(table)} runs."]
    return "\n".join(lines) + "\n"


def compare_models(model_paths: dict[str, str | os.PathLike], dataset_root: str | os.PathLike, split: str = "test",
                   **options) -> dict:
    """The seed project's call: evaluate each checkpoint on the same data, tabulate the headline metrics with
    their intervals, and test every pair (DeLong for binary AUROC, McNemar for accuracy; Holm-corrected)."""
    reports = {name: evaluate(None, checkpoint=str(path), data=dataset_root, split=split, **options)
               for name, path in model_paths.items()}
    tables = {name: _by_path(pd.read_csv(Path(report["out"]) / "predictions.csv")) for name, report in reports.items()}
    arrays = {name: _prediction_arrays(tables[name], report, report["dataset"]["prepared_dir"])
              for name, report in reports.items()}
    rows = []
    for a, b in combinations(reports, 2):
        task = reports[a]["task"]
        (targets, probs_a, _), (_, probs_b, _) = arrays[a], arrays[b]
        correct_a, correct_b = _correct_calls(tables[a], task), _correct_calls(tables[b], task)
        for test, _, result in _per_seed_tests(task, targets, probs_a, probs_b, correct_a, correct_b):
            rows.append({"a": a, "b": b, "test": test, **result})
    for row, adjusted in zip(rows, holm_by_family([row["p"] for row in rows], [row["test"] for row in rows])):
        row["p_holm"] = adjusted
    return {"metrics": {name: report["metrics"] for name, report in reports.items()},
            "ci95": {name: report["ci95"] for name, report in reports.items()}, "tests": rows}
