"""Experiment tracking with MLflow (the ``track`` extra): what a run did, where a team already looks.

Each run is logged from its own files once it is trained or evaluated — its resolved ``config.yaml`` as params, its
``history.csv`` as per-epoch metrics (step = epoch), each evaluation's metrics with their 95 % intervals
(``test/auroc``, ``test/auroc_ci95_low``, ``test/auroc_ci95_high``) and its small artefacts (config, summary,
history, metric tables and plots). A study adds one run of its own holding the comparison tables, the report and
the figures. Logging again (a resumed run, a new evaluation) updates the same MLflow run, found by the run dir and
its creation time; a run trained again under ``--overwrite`` gets a new one.

The store is MLflow's: ``uri`` when given, else ``MLFLOW_TRACKING_URI``, else MLflow's default (a local
``mlflow.db`` in the working folder). lowmed's files stay the record; a store that cannot be reached is refused
before any work, and one that fails once the work is done is a warning (the run is complete).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lowmed.contracts import EvalDir, RunDir, read_yaml
from lowmed.errors import LowmedError

log = logging.getLogger(__name__)

TRACKERS = ("mlflow",)
SMALL_ARTEFACT_BYTES = 2**20  # files larger than this (a big test set's predictions) stay in the run dir only
_PARAM_CHARACTERS = 500  # MLflow keeps up to 6000; a long list of paths helps no one in its table
_BATCH = 500  # metrics per log_batch call (MLflow takes up to 1000)
_IDENTITY = "lowmed.identity"
_HISTORY_STEPS = "lowmed.history_steps"
_STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED", "killed": "KILLED"}


@dataclass
class TrackSettings:
    """Where runs are logged: ``--track mlflow [--track-uri URI] [--track-experiment NAME]``, or a study's
    ``track: {to: mlflow, uri: ..., experiment: ...}``."""

    to: str = "mlflow"
    uri: str | None = None
    experiment: str = "lowmed"

    @classmethod
    def given(cls, to: str | None, uri: str | None, experiment: str | None) -> "TrackSettings | None":
        """From the command line: none without ``--track`` (whose companions then have nothing to do)."""
        if to is None:
            if uri is not None or experiment is not None:
                raise LowmedError("--track-uri and --track-experiment need --track mlflow")
            return None
        settings = cls(to, uri, experiment if experiment is not None else cls.experiment)
        settings.check()
        return settings

    @classmethod
    def from_dict(cls, values: dict, where: str) -> "TrackSettings":
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise LowmedError(f"{where}: unknown key(s) {', '.join(unknown)}; expected to, uri, experiment")
        return cls(**values)

    def check(self, where: str = "--track") -> None:
        """The tracker known and installed, the experiment named: checked where the settings are given."""
        if self.to not in TRACKERS:
            raise LowmedError(f"{where} {self.to!r}: expected {' or '.join(TRACKERS)}")
        if not str(self.experiment).strip():
            raise LowmedError(f"{where}: the experiment needs a name")
        if importlib.util.find_spec("mlflow") is None:
            raise LowmedError(f"{where} mlflow needs MLflow; install it with: pip install 'lowmed[track]'")


@dataclass
class Tracker:
    """An open MLflow store and experiment; ``open_tracker`` makes one."""

    settings: TrackSettings
    client: Any  # mlflow's MlflowClient
    experiment_id: str
    uri: str
    _logged: dict[str, str] = field(default_factory=dict)  # identity → MLflow run id, this session

    def log_run(self, run_dir: str | os.PathLike) -> str | None:
        """Log (or update) one run dir; returns its MLflow run id, or None (warned) when the store failed."""
        try:
            return self._log_run(RunDir(run_dir))
        except LowmedError:
            raise
        except Exception as exc:  # noqa: BLE001 — a server gone, a disk full: the run itself is complete
            _warn_failed(f"run {run_dir}", self.uri, exc)
            return None

    def log_study(self, name: str, out: str | os.PathLike, files: list[Path]) -> str | None:
        """Log (or update) a study's own run: its comparison tables, report and figures."""
        try:
            run_id = self._run_id(f"study:{Path(out).resolve()}", name, {"lowmed.kind": "study"})
            for path in files:
                if path.is_file() and path.stat().st_size <= SMALL_ARTEFACT_BYTES:
                    self.client.log_artifact(run_id, str(path))
            self.client.set_terminated(run_id, "FINISHED")
            return run_id
        except Exception as exc:  # noqa: BLE001
            _warn_failed(f"study {name}", self.uri, exc)
            return None

    def _log_run(self, run: RunDir) -> str:
        from mlflow.entities import Metric, Param

        summary = run.read_summary()
        tags = {
            "lowmed.run_dir": str(run.path.resolve()),
            "lowmed.kind": summary.kind,
            "lowmed.arm": summary.arm,
            "lowmed.model": summary.model,
            "lowmed.dataset": summary.dataset.name,
            "lowmed.status": summary.status,
            "lowmed.weights": summary.weights.name or summary.weights.source,
            "lowmed.version": summary.versions.get("lowmed", ""),
        }
        run_id = self._run_id(f"{run.path.resolve()}@{summary.created}", run.path.name, tags)
        params = [Param(k, v) for k, v in _flattened(read_yaml(run.config, str(run.config))).items()]
        for start in range(0, len(params), 100):  # MLflow takes up to 100 params a call
            self.client.log_batch(run_id, params=params[start : start + 100])
        logged_steps = int(self.client.get_run(run_id).data.tags.get(_HISTORY_STEPS, 0))
        metrics = []
        history = _history_rows(run.history)
        for step, row in enumerate(history, start=1):
            if step > logged_steps:
                metrics += [Metric(key, value, 0, step) for key, value in row.items()]
        for evaluation in run.evaluations():
            metrics += [Metric(key, value, 0, 0) for key, value in _evaluation_metrics(evaluation).items()]
        for start in range(0, len(metrics), _BATCH):
            self.client.log_batch(run_id, metrics=metrics[start : start + _BATCH])
        self.client.set_tag(run_id, _HISTORY_STEPS, str(len(history)))
        for path in (run.config, run.summary, run.history, run.self_supervised, run.tuning):
            _artifact(self.client, run_id, path, None)
        for evaluation in run.evaluations():
            for path in sorted(evaluation.path.glob("*")):
                _artifact(self.client, run_id, path, f"eval/{evaluation.path.name}")
        self.client.set_terminated(run_id, _STATUS.get(summary.status, "FINISHED"))
        return run_id

    def _run_id(self, identity: str, name: str, tags: dict[str, str]) -> str:
        """The MLflow run of ``identity`` (logged earlier, in this session or before), or a new one."""
        if identity not in self._logged:
            quoted = identity.replace("'", "\\'")
            found = self.client.search_runs(
                [self.experiment_id], filter_string=f"tags.`{_IDENTITY}` = '{quoted}'", max_results=1
            )
            if found:
                self._logged[identity] = found[0].info.run_id
            else:
                created = self.client.create_run(self.experiment_id, run_name=name, tags={_IDENTITY: identity})
                self._logged[identity] = created.info.run_id
        run_id = self._logged[identity]
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)
        return run_id


def open_tracker(settings: TrackSettings | None) -> Tracker | None:
    """The store and experiment of ``settings``, opened now so that a bad store is refused before any work."""
    if settings is None:
        return None
    settings.check()
    import mlflow
    from mlflow.tracking import MlflowClient

    for name in ("mlflow", "alembic"):  # their INFO lines (creating a store's tables) are not lowmed's to show
        logging.getLogger(name).setLevel(logging.WARNING)

    uri = settings.uri or mlflow.get_tracking_uri()
    try:
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(settings.experiment)
        experiment_id = (
            experiment.experiment_id if experiment is not None else client.create_experiment(settings.experiment)
        )
    except Exception as exc:  # noqa: BLE001 — a URL MLflow cannot open: a typo, a server not there, no driver
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LowmedError(f"--track-uri {uri}: MLflow cannot open this store ({reason})") from None
    return Tracker(settings, client, experiment_id, uri)


def _warn_failed(what: str, uri: str, exc: Exception) -> None:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    log.warning(
        f"could not log {what} to MLflow at {uri} ({type(exc).__name__}: {reason}); its files are complete, and "
        "logging it again (lowmed evaluate RUN --track mlflow) updates the same MLflow run"
    )


def _flattened(values: dict, prefix: str = "") -> dict[str, str]:
    """A config as MLflow params: nested keys joined with dots, values as short text."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flattened(value, f"{name}."))
        else:
            flat[name] = str(value)[:_PARAM_CHARACTERS]
    return flat


def _history_rows(path: Path) -> list[dict[str, float]]:
    """``history.csv``'s numeric columns per epoch (the epoch counters and the phase name left out)."""
    if not path.is_file():
        return []
    import pandas as pd

    frame = pd.read_csv(path).drop(columns=["epoch", "phase_epoch", "phase"], errors="ignore")
    numeric = frame.select_dtypes("number")
    return [
        {key: float(value) for key, value in row.items() if not math.isnan(value)}
        for row in numeric.to_dict(orient="records")
    ]


def _evaluation_metrics(evaluation: EvalDir) -> dict[str, float]:
    """One evaluation's metrics and their 95 % intervals, under the evaluation's name (``test/auroc``)."""
    report = evaluation.read_report()
    name = evaluation.path.name
    metrics = {f"{name}/n": float(report.n)}
    for key, value in report.metrics.items():
        if isinstance(value, (int, float)) and math.isfinite(value):
            metrics[f"{name}/{key}"] = float(value)
        low, high = (report.ci95.get(key) or [None, None])[:2]
        if low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
            metrics[f"{name}/{key}_ci95_low"], metrics[f"{name}/{key}_ci95_high"] = float(low), float(high)
    return metrics


def _artifact(client, run_id: str, path: Path, folder: str | None) -> None:
    if path.is_file() and path.stat().st_size <= SMALL_ARTEFACT_BYTES:
        client.log_artifact(run_id, str(path), folder)
