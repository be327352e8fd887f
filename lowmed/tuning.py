"""Tuning every arm with the same budget, on the validation split only (``lowmed tune``, a study's ``tune:``).

A fixed recipe suits some arms and starves others; a fair comparison gives each arm the same number of trials of a
search over its training options and picks each arm's values by a validation metric of the best epoch (Kornblith et
al. 2019). Trials are ordinary lowmed runs, which read the train and val splits and never the test split. The
search is Optuna's: a seeded TPE sampler, a median pruner fed each epoch's validation value, and a study kept in an
SQLite file in the tuning folder (or in any storage URL Optuna takes, e.g. PostgreSQL, so that several machines can
share one cell's trials), so that a stopped tuning resumes with its finished trials kept.

A cell is one (dataset, arm, N) on one seed's subset; ``tune_cell`` runs its trials until ``trials`` of them have
finished (completed or pruned) and records the outcome in ``tuning.json`` (``contracts.TuningRecord``).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from lowmed.config import MONITORS, TrainConfig, coerce, first_repeated
from lowmed.console import nested, progress_bar
from lowmed.contracts import Trial, TuningRecord, read_yaml, short_value, slug
from lowmed.errors import Interrupted, LowmedError, RunFailed, quoted
from lowmed.interrupts import stop_asked
from lowmed.io import check_writable, write_yaml

# options that say what a cell is (its data, arm, seed) or where and how it runs, not how it trains
NOT_TUNABLE = {
    "data",
    "subset",
    "per_class",
    "arm",
    "model",
    "weights",
    "weights_dir",
    "dataset_name",
    "seed",
    "out",
    "device",
    "workers",
}
TUNABLE = [name for name in TrainConfig.__dataclass_fields__ if name not in NOT_TUNABLE]
DIRECTIONS = {"val_loss": "minimize", "val_auroc": "maximize", "val_accuracy": "maximize"}
PRUNERS = ("median", "none")
PRUNE_WARMUP_EPOCHS = 5  # no trial is pruned before its fifth epoch: early validation values say little
STALE_POLL_SECONDS = 30  # with shared storage: how often to look at other machines' trials while they run
HEARTBEAT_SECONDS, GRACE_SECONDS = 60, 180  # shared storage: a trial with no heartbeat for this long failed
_SETTINGS_KEYS = {"space", "trials", "metric", "per_seed", "pruner", "seed", "storage"}
# options that act only on a pretrained network's two phases (training.loop.plan_phases); a run from scratch has one
TWO_PHASE_ONLY = {
    "freeze_base",
    "cached_views",
    "cache_finetune",
    "fine_tune_epochs",
    "fine_tune_layers",
    "fine_tune_lr",
}


@dataclass(frozen=True)
class Param:
    """One tuned option: a range (``low``..``high``, optionally on a log scale or in steps) or a list of choices."""

    name: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple | None = None

    def suggest(self, trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if isinstance(self.low, int):
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def as_given(self) -> Any:
        if self.choices is not None:
            return list(self.choices)
        given = {"low": self.low, "high": self.high}
        return given | ({"log": True} if self.log else {}) | ({"step": self.step} if self.step else {})


@dataclass(frozen=True)
class TuneSettings:
    """A study's ``tune:`` mapping (or ``lowmed tune``'s options): what to search, with how many trials, on what."""

    space: tuple[Param, ...]
    trials: int = 12
    metric: str = "val_loss"
    per_seed: bool = False  # tune every seed's subset, not the first seed's only
    pruner: str = "median"
    seed: int = 0
    storage: str | None = None  # an Optuna storage URL; None = an SQLite file in the tuning folder

    @classmethod
    def from_dict(cls, values: Any, where: str, base: dict | None = None) -> "TuneSettings":
        """Check everything now, so that a typo costs seconds: ``base`` is the TrainConfig values the trials start
        from (every bound and choice must make a valid run with them)."""
        if not isinstance(values, dict):
            raise LowmedError(f"{where}: expected a mapping with space, trials, metric, ...")
        unknown = sorted(set(values) - _SETTINGS_KEYS)
        if unknown:
            raise LowmedError(
                f"{where}: unknown key(s) {', '.join(unknown)}; expected {', '.join(sorted(_SETTINGS_KEYS))}"
            )
        space = values.get("space")
        if not isinstance(space, dict) or not space:
            raise LowmedError(
                f"{where}.space: expected a mapping of options to ranges or choices, "
                "e.g. lr: {low: 1e-5, high: 1e-2, log: true}"
            )
        return cls(
            space=tuple(_param(str(name), given, f"{where}.space.{name}", base or {}) for name, given in space.items()),
            trials=_whole(values.get("trials", cls.trials), f"{where}.trials", minimum=1),
            metric=_choice(values.get("metric", cls.metric), MONITORS, f"{where}.metric"),
            per_seed=_flag(values.get("per_seed", cls.per_seed), f"{where}.per_seed"),
            pruner=_choice(values.get("pruner", cls.pruner), PRUNERS, f"{where}.pruner"),
            seed=_whole(values.get("seed", cls.seed), f"{where}.seed", minimum=0),
            storage=None if values.get("storage") is None else str(values["storage"]),
        )

    def describe(self) -> str:
        space = "; ".join(f"{p.name} {p.as_given()}" for p in self.space)
        return (
            f"{self.trials} trials per cell, each arm alike, chosen by {self.metric} of the best epoch on the "
            f"validation split (TPE sampler, seed {self.seed}; pruner {self.pruner}); space: {space}"
        )

    def identity(self) -> dict:
        """What makes a cell's trials comparable: not the budget (raising it continues the same trials), not the
        storage."""
        return {
            "space": {p.name: p.as_given() for p in self.space},
            "metric": self.metric,
            "pruner": self.pruner,
            "seed": self.seed,
        }


def _whole(value: Any, where: str, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise LowmedError(f"{where}: {quoted(value)}; expected a whole number of at least {minimum}")
    return value


def _choice(value: Any, allowed: tuple, where: str) -> str:
    if value not in allowed:
        raise LowmedError(f"{where}: {quoted(value)}; expected one of {', '.join(allowed)}")
    return value


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise LowmedError(f"{where}: {quoted(value)}; expected true or false")
    return value


def _param(name: str, given: Any, where: str, base: dict) -> Param:
    if name not in TrainConfig.__dataclass_fields__:
        raise LowmedError(f"{where}: unknown option; tunable options: {', '.join(TUNABLE)}")
    if name in NOT_TUNABLE:
        raise LowmedError(
            f"{where}: not tunable (it says what the cell is or where it runs); tunable options: {', '.join(TUNABLE)}"
        )
    hint = typing.get_type_hints(TrainConfig)[name]
    kinds = set(typing.get_args(hint) or (hint,)) - {type(None)}
    if isinstance(given, list):
        if not given:
            raise LowmedError(f"{where}: an empty list of choices; give at least one")
        choices = tuple(coerce(choice, hint, where) for choice in given)
        param = Param(name, choices=choices)
        values = list(choices)
        repeated = first_repeated(values)
        if repeated is not None:
            raise LowmedError(f"{where}: the choice {repeated!r} is listed twice; list each once")
    elif isinstance(given, dict):
        unknown = sorted(set(given) - {"low", "high", "log", "step"})
        if unknown or "low" not in given or "high" not in given:
            raise LowmedError(
                f"{where}: expected {{low: ..., high: ...}} with optional log and step, or a list of choices"
            )
        if not kinds & {int, float}:
            raise LowmedError(
                f"{where}: a range for a {'/'.join(k.__name__ for k in kinds)} option; give a list of choices"
            )
        whole = int in kinds and float not in kinds
        low, high, step = given["low"], given["high"], given.get("step")
        for label, bound in (("low", low), ("high", high), ("step", step)):
            if bound is None and label == "step":
                continue
            if isinstance(bound, bool) or not isinstance(bound, int if whole else (int, float)):
                expected = "a whole number (the option is an integer)" if whole else "a number"
                raise LowmedError(f"{where}.{label}: {quoted(bound)}; expected {expected}")
        if not low < high:
            raise LowmedError(f"{where}: empty range [{low}, {high}]; expected low < high")
        log = _flag(given.get("log", False), f"{where}.log")
        if log and low <= 0:
            raise LowmedError(f"{where}: a log range must start above 0, not at {low}")
        if log and step is not None:
            raise LowmedError(f"{where}: give log or step, not both")
        if step is not None and step <= 0:
            raise LowmedError(f"{where}.step: {step}; expected a positive step")
        cast = int if whole else float
        param = Param(name, cast(low), cast(high), log, None if step is None else cast(step))
        values = [param.low, param.high]
    else:
        raise LowmedError(f"{where}: {quoted(given)}; expected {{low: ..., high: ...}} or a list of choices")
    for value in values:  # every end of the range and every choice must make a valid run
        try:
            TrainConfig.from_dict({**base, "data": base.get("data") or ".", name: value}, source=where).validate()
        except LowmedError as exc:
            raise LowmedError(f"{where}: {quoted(value)} would not make a valid run: {exc}") from None
    return param


def settings_from_file(path: str | Path) -> dict:
    """A YAML file holding a ``tune:`` mapping, or the mapping itself (for ``lowmed tune --space``)."""
    values = read_yaml(path, f"--space {path}")
    return values["tune"] if set(values) == {"tune"} else values


@dataclass
class TuningCell:
    """One tuning cell: the trials start from ``base`` (TrainConfig values) and run in ``folder``."""

    name: str
    base: dict
    folder: Path
    storage: str | None = None  # default storage URL when the settings name none
    record: TuningRecord | None = field(default=None, repr=False)

    @property
    def record_path(self) -> Path:
        return self.folder / TuningRecord.FILE

    def optuna_study(self, settings: TuneSettings) -> str:
        """The study's name in the storage: the cell's name and a digest of everything its trials depend on, so a
        changed space or recipe starts a new set of trials instead of mixing with the old."""
        base = {k: v for k, v in self.base.items() if k != "out"}
        identity = json.dumps({"base": base, **settings.identity()}, sort_keys=True, default=str)
        return f"{self.name}-{hashlib.sha256(identity.encode()).hexdigest()[:8]}"


def cell_space(settings: TuneSettings, base: dict) -> tuple[Param, ...]:
    """The space a cell searches: all of it for a two-phase run, less the options a one-phase run ignores, so that
    a scratch arm spends its budget on what it trains with and its record names no values it never used."""
    from lowmed.models.weights import resolve_weights

    config = TrainConfig.from_dict({**base, "data": "."}, source="the tuning cell")
    one_phase = resolve_weights(config.weights, config.model) == "none" or not config.freeze_base
    return tuple(p for p in settings.space if not (one_phase and p.name in TWO_PHASE_ONLY))


def tuned_options(record: TuningRecord) -> dict:
    """What a run trained with a cell's outcome takes: the chosen values, and the tuning metric picks its best
    epoch as it picked the trials'."""
    return {**record.chosen, "monitor": record.metric}


def finished_record(cell: TuningCell, settings: TuneSettings) -> TuningRecord | None:
    """The cell's record, where it holds this budget of these trials: then the cell is not tuned again."""
    if not cell.record_path.is_file():
        return None
    record = TuningRecord.read(cell.record_path)
    return record if (record.optuna_study, record.budget) == (cell.optuna_study(settings), settings.trials) else None


def tune_cell(cell: TuningCell, settings: TuneSettings, on_trial: Callable[[str], None] | None = None) -> TuningRecord:
    """Run (or resume) ``cell``'s trials until ``settings.trials`` have finished; write and return the record.

    A cell whose record already holds this budget of these trials is not tuned again. ``on_trial`` is given a line
    per finished trial (for a caller that shows its own progress bar and runs this inside ``nested()``).
    """
    from lowmed.training.features import SharedCaches

    done = finished_record(cell, settings)
    if done is not None:
        return done
    name = cell.optuna_study(settings)
    optuna = _optuna()
    if settings.storage is None:  # lowmed's own database, in the cell's folder
        cell.folder.mkdir(parents=True, exist_ok=True)
    storage, url, owned = _storage(  # a URL given that does not open is refused before anything is written
        settings.storage or cell.storage or f"sqlite:///{(cell.folder / 'optuna.db').resolve()}",
        settings.storage is None,
    )
    cell.folder.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        load_if_exists=True,
        direction=DIRECTIONS[settings.metric],
        sampler=_sampler(optuna, settings, trials_before=0),
        pruner=(
            optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=PRUNE_WARMUP_EPOCHS)
            if settings.pruner == "median"
            else optuna.pruners.NopPruner()
        ),
    )
    if study.trials:  # resumed: a sampler seeded as at the start would draw the first trials' values again
        study.sampler = _sampler(optuna, settings, trials_before=len(study.trials))
    if owned:  # lowmed's own file: a trial still marked running was left by a stopped invocation
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    caches = SharedCaches()
    with progress_bar(transient=False) as bar:
        task = bar.add_task(f"tuning {cell.name}", total=settings.trials, status="")
        while True:
            finished, running = _finished_and_running(study, optuna)
            bar.update(task, completed=min(len(finished), settings.trials), status=_status(finished, settings))
            if len(finished) >= settings.trials:
                break
            if len(finished) + len(running) >= settings.trials:  # other machines' trials complete the budget
                time.sleep(STALE_POLL_SECONDS)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)
                continue
            if stop_asked():  # Ctrl-C after the last batch of the trial before: stop here, not at the next one
                raise Interrupted(_STOPPED.format(cell=cell.name))
            ours: list[int] = []  # this trial's number (with shared storage, other machines add trials too)
            try:
                study.optimize(
                    partial(_run_trial, cell=cell, settings=settings, caches=caches, numbers=ours), n_trials=1
                )
            except KeyboardInterrupt:  # Ctrl-C outside a trial's batches (Optuna's bookkeeping, a cache build)
                raise Interrupted(_STOPPED.format(cell=cell.name)) from None
            if on_trial is not None:
                on_trial(_trial_line(cell, study.get_trials(deepcopy=False)[ours[0]], settings))
    record = _record(cell, settings, study, name, url, optuna)
    record.write(cell.record_path)
    return record


_STOPPED = (
    "tuning of {cell} stopped; a trial it was in is not counted; run the same command again to go on, with the "
    "finished trials kept"
)


def _sampler(optuna, settings: TuneSettings, trials_before: int):
    """The TPE sampler, seeded by the settings' seed and the trials the study already holds: a fresh study draws as
    it always has, and a resumed one (after a stop, or a larger budget) goes on to new values, the same ones each
    time it resumes at the same point."""
    startup = min(10, max(4, settings.trials // 3))
    return optuna.samplers.TPESampler(seed=settings.seed + trials_before, n_startup_trials=startup)


def _optuna():
    try:
        import optuna
    except ImportError:
        raise LowmedError("tuning needs Optuna: pip install 'lowmed[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _storage(url: str, owned: bool):
    """Optuna's storage for ``url`` and the URL to record (without a password). A shared database gets
    heartbeats, so that a trial whose machine died is failed (and run again) instead of waited for forever."""
    import optuna

    password = re.search(r"://[^:/@]+:([^@]*)@", url)

    def hidden(text: str) -> str:
        return text.replace(password.group(1), "***") if password and password.group(1) else text

    shown = hidden(url)
    try:
        if owned:
            return optuna.storages.RDBStorage(url), shown, True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS)
        return storage, shown, False
    except Exception as exc:  # a URL Optuna cannot open: a driver missing, a server not there, a typo
        reason = hidden(str(exc)).splitlines()[0] if str(exc) else ""
        raise LowmedError(
            f"tuning storage {shown}: cannot open it ({type(exc).__name__}: {reason}){_storage_hint(url, exc)}"
        ) from None


def _storage_hint(url: str, exc: Exception) -> str:
    """What to do about a storage URL that did not open, where lowmed can tell."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if not scheme:
        return "; expected a database URL such as sqlite:///tuning.db or postgresql://user@host/db"
    if isinstance(exc, ImportError):
        driver = {"postgresql": "psycopg2-binary", "mysql": "pymysql"}.get(scheme.split("+")[0], "its driver")
        return f"; install the database driver: pip install {driver}"
    if scheme == "sqlite" and url.startswith("sqlite:///"):
        folder = Path(url[len("sqlite:///") :]).parent
        if not folder.is_dir():
            return f"; the folder {folder} does not exist"
    return ""


def _finished_and_running(study, optuna) -> tuple[list, list]:
    states = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    finished = sorted((t for t in trials if t.state in (states.COMPLETE, states.PRUNED)), key=lambda t: t.number)
    return finished, [t for t in trials if t.state == states.RUNNING]


def _status(finished: list, settings: TuneSettings) -> str:
    values = [t.value for t in finished[: settings.trials] if t.state.name == "COMPLETE"]
    if not values:
        return ""
    best = min(values) if DIRECTIONS[settings.metric] == "minimize" else max(values)
    return f"best {settings.metric} {best:.4f}"


def _trial_line(cell: TuningCell, trial, settings: TuneSettings) -> str:
    values = ", ".join(f"{name}={short_value(value)}" for name, value in trial.params.items())  # as chosen_text
    state = trial.state.name.lower()
    if trial.value is None:
        return f"{cell.name} trial {trial.number}: {state} ({values})"
    outcome = f"{settings.metric} {trial.value:.4f}" + ("" if state == "complete" else f", {state}")
    return f"{cell.name} trial {trial.number}: {outcome} ({values})"


def _run_trial(trial, cell: TuningCell, settings: TuneSettings, caches, numbers: list[int]) -> float:
    """One trial: a lowmed run with the suggested values, stopped by the pruner when its validation curve is
    hopeless. Its checkpoints are removed afterwards; its config, history and train.json stay."""
    import optuna

    numbers.append(trial.number)
    from lowmed.training.loop import TrialHooks
    from lowmed.training.train import train

    values = {p.name: p.suggest(trial) for p in cell_space(settings, cell.base)}
    run_dir = cell.folder / f"trial-{trial.number:03d}"
    config = TrainConfig.from_dict(
        {**cell.base, **values, "monitor": settings.metric, "out": str(run_dir)},
        source=f"{cell.name} trial {trial.number}",
    )
    better = min if DIRECTIONS[settings.metric] == "minimize" else max
    best_so_far: list[float] = []

    def should_stop(row: dict) -> bool:
        best_so_far.append(better([*best_so_far[-1:], row[settings.metric]]))
        trial.report(best_so_far[-1], step=row["epoch"])
        return trial.should_prune()

    try:
        with nested():  # the cell's bar shows the trials; a trial's own lines only with -v
            summary = train(config, overwrite=True, trial=TrialHooks(trial.number, should_stop, caches))
    except Interrupted:  # Ctrl-C: the trial failed (not counted) and the tuning stops, to resume later
        raise Interrupted(_STOPPED.format(cell=cell.name)) from None
    except RunFailed as exc:  # diverged (a loss that is not finite): a hopeless trial, as a pruned one
        trial.set_user_attr("outcome", f"diverged: {exc}")
        raise optuna.TrialPruned(str(exc)) from None
    finally:
        for checkpoint in run_dir.glob("*.pt"):
            checkpoint.unlink()
    trial.set_user_attr("epochs", summary.epochs_run)
    trial.set_user_attr("train_seconds", summary.epoch_seconds_total)
    if summary.status == "pruned":
        trial.set_user_attr("outcome", summary.error)
        raise optuna.TrialPruned(summary.error)
    return float(summary.best_epoch.value)


def _record(cell: TuningCell, settings: TuneSettings, study, name: str, url: str, optuna) -> TuningRecord:
    finished, _ = _finished_and_running(study, optuna)
    counted = {t.number for t in finished[: settings.trials]}
    completed = [t for t in finished if t.number in counted and t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        raise RunFailed(
            f"tuning {cell.name}: all {settings.trials} trials were pruned or diverged; "
            "narrow the space (e.g. lower learning rates) or raise trials"
        )
    sign = 1 if DIRECTIONS[settings.metric] == "minimize" else -1
    best = min(completed, key=lambda t: (sign * t.value, t.number))  # ties: the earlier trial
    trials = [
        Trial(
            number=t.number,
            state=t.state.name.lower(),
            counted=t.number in counted,
            value=t.value,
            params=t.params,
            epochs=t.user_attrs.get("epochs"),
            seconds=t.user_attrs.get("train_seconds"),
            outcome=t.user_attrs.get("outcome"),
        )
        for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    ]
    return TuningRecord(
        cell=cell.name,
        optuna_study=name,
        storage=url,
        metric=settings.metric,
        direction=DIRECTIONS[settings.metric],
        budget=settings.trials,
        space={p.name: p.as_given() for p in cell_space(settings, cell.base)},
        trials=trials,
        chosen=dict(best.params),
        best_trial=best.number,
        best_value=float(best.value),
        seconds=round(sum(t.seconds or 0 for t in trials if t.counted), 2),
    )


def tune(config: TrainConfig, settings: TuneSettings, out: str | Path | None = None) -> tuple[TuningRecord, Path]:
    """``lowmed tune``: tune one cell — ``config``'s data, model, weights, N and seed — into ``out`` (an existing
    tuning folder resumes).

    Returns the record and ``best-config.yaml``: the chosen values in a full run config, for ``lowmed train
    --config``.
    """
    from lowmed.data.subsample import subsample

    config.validate()
    base = config.to_dict()
    base.pop("out")
    data = config.subset or config.data
    assert data is not None  # validate(): DATA or --subset
    if config.per_class and not config.subset:  # one subset drawn once, for every trial
        base["subset"] = str(subsample(data, config.per_class, seed=config.seed).path)
    source = Path(data)
    size = f"n{config.per_class}" if config.per_class else "all"
    folder = Path(out) if out else Path("runs") / slug(f"tune-{source.stem}-{config.model}-{size}-seed{config.seed}")
    tuned_here = any((folder / name).is_file() for name in ("optuna.db", TuningRecord.FILE))
    if folder.is_dir() and any(folder.iterdir()) and not tuned_here:
        raise LowmedError(f"--out {folder}: exists and is not a tuning folder; choose another --out")
    check_writable(folder / TuningRecord.FILE, "--out")
    record = tune_cell(TuningCell(folder.name, base, folder), settings)
    best_config = folder / "best-config.yaml"
    write_yaml(best_config, TrainConfig.from_dict({**base, **tuned_options(record)}, source=str(best_config)).to_dict())
    return record, best_config
