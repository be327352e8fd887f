"""``lowmed train`` / ``finetune``: resolve a config, set up the run dir, data and model, run the loop."""

from __future__ import annotations

import logging
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import lowmed
from lowmed.config import TrainConfig
from lowmed.console import nested, warn_or_refuse
from lowmed.contracts import (
    DERIVED_ARMS,
    MANIFEST,
    DatasetRef,
    RunDir,
    TrainSummary,
    WeightsReport,
    is_prepared,
    read_yaml,
    slug,
)
from lowmed.data.leakage import CHECKED_NONE, guard_pretraining, run_shaping_rows
from lowmed.data.loading import LabelledImages, label_tensors, load_split, too_many_unreadable
from lowmed.data.manifest import PreparedDataset
from lowmed.data.subsample import last_subset, load_or_prepare, subsample
from lowmed.device import Precision, channels_last, device_name, native_amp, resolve_device, software_versions
from lowmed.distributed import Distributed
from lowmed.errors import Interrupted, LowmedError, RunFailed
from lowmed.io import sha256_file
from lowmed.locking import own_run_dir
from lowmed.models.checkpoint import Checkpoint, CheckpointHeader, trained_model_name
from lowmed.models.forward import Normalizer
from lowmed.models.registry import Classifier, ModelSpec, build_model, count_parameters, get_model_spec
from lowmed.models.weights import load_weights, resolve_weights, weights_kind, weights_preprocessing
from lowmed.models.xrv import FORMAT_DATASETS, is_xrv, overlap
from lowmed.preprocessing import Preprocessing
from lowmed.tracking import Tracker, TrackSettings, open_tracker
from lowmed.training.checkpoint import check_run_dir, read_training_state, start_run_dir
from lowmed.training.loop import (
    Criterion,
    LoopInputs,
    LoopResult,
    Phase,
    TrialHooks,
    class_weights,
    plan_phases,
    run_phases,
    seed_everything,
)
from lowmed.training.memory import check_fits, estimate_training_memory

log = logging.getLogger(__name__)

DEFAULT_RUNS_ROOT = Path("runs")


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    runs_root: str | os.PathLike = DEFAULT_RUNS_ROOT,
    dist: Distributed | None = None,
    trial: TrialHooks | None = None,
    strict: bool = False,
    track: TrackSettings | None = None,
) -> TrainSummary:
    """Train one run; returns the summary also written to ``train.json``.

    With ``resume`` the run dir in ``config.out`` is continued from its ``last.pt``. ``dist``: the processes that
    train it together; by default the ones torchrun started (or this process alone). ``trial``: the run is a
    tuning trial (``lowmed.tuning``), which its pruner may stop early (status ``pruned``). ``strict``: images lost
    since prepare, and weights that may have seen the target's test images, are errors, not warnings. With no
    data and no subset, the subset ``lowmed subsample`` last wrote below ``./lowmed-data`` is taken (and said).
    ``track``: the finished run is logged to MLflow (``lowmed.tracking``; its store is opened before any work).
    """
    dist = dist if dist is not None else Distributed.from_environment(config.device)
    with nullcontext() if dist.is_main else nested():  # under torchrun, the first process speaks for all
        setup = _set_up(config, resume, Path(runs_root), dist, track)
        with own_run_dir(setup.run_dir.path, "train", enabled=dist.is_main):  # one process at a time in a run dir
            dist.on_main(lambda: check_run_dir(setup.run_dir, resume, overwrite))
            run = _open_run(setup, resume, strict, trial)
            started = time.perf_counter()
            result = _run_loop(run, trial)
            _record(run, result, time.perf_counter() - started)
    if setup.tracker is not None:
        setup.tracker.log_run(setup.run_dir.path)
    return run.summary


@dataclass
class _Setup:
    """A run before its run dir is touched: the resolved config, the data, the model and its starting weights.
    Every refusal that needs no run dir is made while it is built."""

    config: TrainConfig  # resolved: out, arm, image size and input contract filled in
    spec: ModelSpec
    dataset: PreparedDataset
    run_dir: RunDir
    image_size: int
    device: torch.device
    dist: Distributed
    model: Classifier
    weights: WeightsReport | None  # the starting weights and their contract; a resumed run reads its own
    preprocessing: Preprocessing | None
    chosen: str | None  # the subset taken when no data was given
    tracker: Tracker | None  # the store the finished run is logged to


def _set_up(
    config: TrainConfig,
    resume: bool,
    runs_root: Path,
    dist: Distributed,
    track: TrackSettings | None,
) -> _Setup:
    chosen = None
    if config.data is None and config.subset is None:
        subset = last_subset()
        chosen = f"no DATA given: took {subset}, the subset 'lowmed subsample' last wrote"
        config = replace(config, subset=str(subset))
    config.validate()
    tracker = open_tracker(track) if dist.is_main else None
    if dist.enabled and config.balanced_sampler:
        raise LowmedError("--balanced-sampler: not available under torchrun; use --class-weights auto")
    spec = get_model_spec(config.model)
    dataset = _dataset(config)
    if chosen:
        log.warning(chosen)  # shown with --quiet too: the data was not named
    config = _resolved(config, spec, dataset, runs_root)
    assert config.out is not None and config.image_size is not None  # _resolved fills them
    run_dir, image_size = RunDir(config.out), config.image_size
    device = dist.device(config.device)
    seed_everything(config.seed)
    model = build_model(spec, len(dataset.classes), config.head)
    if config.sync_bn and dist.enabled:
        if device.type != "cuda":
            raise LowmedError("--sync-bn: synchronised batch norm needs GPUs (NCCL); leave it off on CPUs")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    report, preprocessing = None, None
    if not resume:  # weights that cannot be had or do not fit are refused before anything is written
        report = load_weights(model.backbone, spec, config.weights, config.allow_partial_weights, config.weights_dir)
        _check_source_model(report, spec.name)
        preprocessing = _input_contract(report, spec, config)
        config = replace(config, input_channels=preprocessing.channels, input_norm=preprocessing.norm)  # config.yaml
    images = len(dataset.split("train")) + len(dataset.split("val"))
    estimate = estimate_training_memory(model, image_size, config.batch_size, images, device)
    check_fits(estimate, device, image_size, config.batch_size)  # before the run dir is touched
    return _Setup(
        config, spec, dataset, run_dir, image_size, device, dist, model, report, preprocessing, chosen, tracker
    )


@dataclass
class _OpenRun:
    """A run in its run dir: its summary as written so far, its images, and the loop's inputs and phases."""

    setup: _Setup
    summary: TrainSummary
    splits: dict[str, LabelledImages]
    inputs: LoopInputs
    phases: list[Phase]
    state: Checkpoint | None  # last.pt, when resuming
    earlier_caches: dict  # what a resumed run's finished phases recorded
    precision: Precision

    def record(self, **changes: Any) -> None:
        """Update ``train.json`` (rank 0 writes it)."""
        for name, value in changes.items():
            setattr(self.summary, name, value)
        if self.setup.dist.is_main:
            self.summary.write(self.setup.run_dir.summary)


def _open_run(setup: _Setup, resume: bool, strict: bool, trial: TrialHooks | None) -> _OpenRun:
    """Read what a resumed run left, refuse what must be refused, decode the images, and only then write the run
    dir: an --overwrite that stops here leaves the old run as it was."""
    config, dataset, run_dir, dist = setup.config, setup.dataset, setup.run_dir, setup.dist
    model, device = setup.model, setup.device
    state = read_training_state(run_dir) if resume else None
    report, preprocessing, earlier_caches, chosen = setup.weights, setup.preprocessing, {}, setup.chosen
    if resume:  # the starting weights, and what the finished phases recorded, as the run wrote them
        earlier = run_dir.read_summary()
        report, earlier_caches, chosen = earlier.weights, earlier.caches, earlier.dataset.chosen
        preprocessing = _input_contract(report, setup.spec, config)
    assert report is not None and preprocessing is not None  # _set_up's, or the resumed run's
    pretraining_overlap = _pretraining_overlap(report, dataset, config.dataset_name, dist.is_main, strict)
    log.info(f"{run_dir.path} (arm {config.arm}): {setup.spec.name}, {report.summary()}")
    splits = _load_splits(dataset, setup.image_size, device, strict)
    dist.on_main(lambda: _check_disk_space(run_dir.path, count_parameters(model)))
    if not resume:
        dist.on_main(lambda: start_run_dir(run_dir, config.to_dict()))  # only rank 0 writes the run dir
    summary = _summary(config, dataset, report, preprocessing.to_dict(), device, count_parameters(model), dist)
    summary.tuning_trial = trial.number if trial else None
    summary.dataset.chosen = chosen
    summary.pretraining_overlap = pretraining_overlap
    summary.status = "running"
    if dist.is_main:
        summary.write(run_dir.summary)
    precision = Precision.choose(device, bool(config.amp))
    if precision.enabled and not native_amp(device) and dist.is_main:
        log.warning(f"--amp: this {device.type} has no native {precision.describe()}; it is emulated, slower than fp32")
    weights = (
        class_weights(dataset.task, splits["train"].targets, splits["train"].mask, len(dataset.classes))
        if config.class_weights == "auto" and not config.balanced_sampler
        else None
    )
    model.to(device)
    if channels_last(device):
        model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    pretrained = report.source != "none"
    inputs = LoopInputs(
        model=model,
        train=splits["train"],
        val=splits["val"],
        task=dataset.task,
        criterion=Criterion(dataset.task, None if weights is None else weights.to(device)),
        normalize=Normalizer(preprocessing, device),
        device=device,
        precision=precision,
        run_dir=run_dir,
        dist=dist,
        pretrained=pretrained,
        checkpoint_header=CheckpointHeader(
            config=config.to_dict(),
            preprocessing=preprocessing.to_dict(),
            task=dataset.task,
            classes=dataset.classes,
            lowmed_version=lowmed.__version__,
        ),
    )
    phases = plan_phases(config, pretrained=pretrained)
    return _OpenRun(setup, summary, splits, inputs, phases, state, earlier_caches, precision)


def _run_loop(run: _OpenRun, trial: TrialHooks | None) -> LoopResult:
    """The training loop; a stop or a failure is recorded in ``train.json`` before it is raised."""
    config, run_dir = run.setup.config, run.setup.run_dir
    try:
        return run_phases(run.inputs, config, run.phases, run.state, trial)
    except KeyboardInterrupt:
        run.record(status="interrupted")
        raise Interrupted(
            f"interrupted; {run_dir.last.name} holds the last finished epoch; continue with: "
            f"lowmed train --resume {run_dir.path}"
        ) from None
    except torch.cuda.OutOfMemoryError:
        message = (
            f"out of GPU memory at --batch-size {config.batch_size}, --image-size {config.image_size} "
            f"({config.model}); try --batch-size {max(2, config.batch_size // 2)} or a smaller --image-size"
        )
        run.record(status="failed", error=message)
        raise RunFailed(message) from None
    except RunFailed as exc:
        run.record(status="failed", error=str(exc))
        raise


def _record(run: _OpenRun, result: LoopResult, seconds: float) -> None:
    """How the run went, in ``train.json``: its status, best epoch, time and throughput per phase."""
    history = result.history
    run.record(
        status="pruned" if result.pruned_at else "completed",
        error=f"stopped after epoch {result.pruned_at} by the tuner's pruner" if result.pruned_at else None,
        phases=[p.name for p in run.phases],
        epochs_run=len(history),
        best=result.best,
        wall_seconds=round(seconds, 2),  # this invocation (a resumed run: since resume)
        resumed=run.state is not None,
        epoch_seconds_total=round(sum(row["seconds"] for row in history), 2),
        # per phase: a phase on cached activations runs only the top of the network and is far faster
        train_images_per_s={
            phase.name: round(float(np.median([r["images_per_s"] for r in history if r["phase"] == phase.name])), 1)
            for phase in run.phases
            if any(r["phase"] == phase.name for r in history)
        },
        precision=run.precision.describe(),
        caches={**run.earlier_caches, **result.caches},
        unreadable_files={name: split.unreadable for name, split in run.splits.items() if split.unreadable},
    )


def resume_run(run_dir: str | os.PathLike, *, dist: Distributed | None = None) -> TrainSummary:
    """Continue an interrupted run from its ``last.pt`` with its own ``config.yaml``; a completed run is left
    untouched (its summary is returned)."""
    run = RunDir(run_dir)
    if not run.config.is_file():
        raise LowmedError(f"--resume {run.path}: no {run.config.name}; expected a lowmed run dir")
    if run.state() == "completed":
        return run.read_summary()
    config = TrainConfig.from_yaml(run.config)
    return train(replace(config, out=str(run.path)), resume=True, dist=dist)


def finetune(
    source: str | os.PathLike,
    data: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
    strict: bool = False,
    runs_root: str | os.PathLike = DEFAULT_RUNS_ROOT,
    track: TrackSettings | None = None,
    **options: Any,
) -> TrainSummary:
    """Model C: train on ``data`` starting from the backbone of ``source`` (a run dir or a checkpoint file).

    Same as ``train`` with ``weights=source``; the model defaults to the one the source was trained as.
    """
    source = Path(source)
    if not source.exists():
        raise LowmedError(f"SOURCE {source}: no such run dir or checkpoint file")
    values = {**options, "weights": str(source)}
    if data is not None:
        values["data"] = str(data)
    if values.get("model") is None:
        values["model"] = source_model_name(source)
        if values["model"] is None:
            raise LowmedError(f"SOURCE {source} is a plain weights file; say which architecture with --model")
    config = TrainConfig.from_dict(values, source="finetune")
    return train(config, overwrite=overwrite, strict=strict, runs_root=runs_root, track=track)


def source_model_name(source: Path) -> str | None:
    """The model an earlier lowmed run (or its checkpoint) was trained with, if it is one."""
    if source.is_dir():  # a training run's config, or a pretraining's: both name their model
        config = RunDir(source).config
        return str(read_yaml(config).get("model")) if config.is_file() else None
    return trained_model_name(source)


def train_model(
    model_name: str | None = None,
    dataset_root: str | os.PathLike | None = None,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    overwrite: bool = False,
    **options: Any,
) -> TrainSummary:
    """Python entry point in the seed project's spelling: ``train_model(model_name="vgg19",
    dataset_root="./dataset", epochs=30, learning_rate=1e-4, checkpoint_dir="./checkpoints")``.

    Any ``TrainConfig`` field is accepted as a keyword. Returns the summary; ``summary["run_dir"]`` and
    ``summary["model_path"]`` (the best checkpoint) read as in the seed project.
    """
    if resume:
        summary = resume_run(resume)
    else:
        values = dict(options)
        if "learning_rate" in values:
            values["lr"] = values.pop("learning_rate")
        if model_name:
            values["model"] = model_name
        if dataset_root:
            values["data"] = str(dataset_root)
        config = TrainConfig.from_dict(values, source="train_model()")
        summary = train(config, overwrite=overwrite, runs_root=checkpoint_dir or DEFAULT_RUNS_ROOT)
    return summary


def _dataset(config: TrainConfig) -> PreparedDataset:
    if config.subset:
        dataset = PreparedDataset.load(config.subset)
        if config.data is not None:
            _check_subset_of(dataset, Path(config.data).expanduser())
    else:
        assert config.data is not None  # validate(): DATA or --subset
        data = Path(config.data).expanduser()
        if config.per_class:
            dataset = subsample(data, config.per_class, seed=config.seed).dataset
        else:
            dataset = load_or_prepare(data, None)
    return dataset.check_trainable()


def _check_subset_of(subset: PreparedDataset, data: Path) -> None:
    """DATA and --subset together must name one dataset: a subset is trained on its own prepared dir's images."""
    if is_prepared(data):
        same = PreparedDataset.load(data).root == subset.root
    else:
        same = str(data.resolve()) == subset.source_path
    if not same:
        raise LowmedError(
            f"--subset {subset.manifest_path} was drawn from {subset.root}, not from DATA {data}; give only one of "
            "them, or a subset drawn from DATA"
        )


def _resolved(config: TrainConfig, spec, dataset: PreparedDataset, runs_root: Path) -> TrainConfig:
    """The config as it will run: paths, image size, weights, AMP and run dir filled in."""
    subset = str(dataset.manifest_path) if dataset.subset else None
    per_class = dataset.subset.per_class if dataset.subset else config.per_class
    weights = resolve_weights(config.weights, spec.name)
    kind = weights_kind(weights, spec)
    weights = str(Path(weights).resolve()) if kind in ("file", "run") else weights
    named_arm = config.arm
    config = replace(
        config,
        data=str(dataset.root),
        subset=subset,
        per_class=per_class,
        model=spec.name,
        weights=weights,
        arm=config.arm or DERIVED_ARMS["self-supervised" if _self_supervised(weights, kind) else kind],
        image_size=config.image_size or weights_preprocessing(weights, spec).input_size,
        amp=config.amp if config.amp is not None else resolve_device(config.device).type == "cuda",
    )
    if config.image_size < spec.min_input_size:
        raise LowmedError(f"--image-size {config.image_size}: {spec.name} needs at least {spec.min_input_size} px")
    if config.out is None:
        config = replace(config, out=str(runs_root / _run_name(config, dataset, named_arm)))
    return config


def _self_supervised(weights: str, kind: str) -> bool:
    """Weights from a run dir of ``lowmed pretrain`` (Model D)."""
    return kind == "run" and RunDir(weights).self_supervised.is_file()


def _run_name(config: TrainConfig, dataset: PreparedDataset, named_arm: str | None) -> str:
    """``<dataset>-<model>-<arm, or where the weights came from>-n<N>-seed<K>``."""
    if named_arm:
        source = slug(named_arm)
    elif config.weights in ("none", "imagenet"):
        source = "scratch" if config.weights == "none" else "imagenet"
    elif is_xrv(config.weights):
        source = config.weights.replace(":", "-")
    else:
        path = Path(config.weights)
        source = "from-" + (path.name if path.is_dir() else path.stem)
    size = f"n{config.per_class}" if config.per_class else "all"
    return f"{dataset.root.name}-{config.model}-{source}-{size}-seed{config.seed}"


def _check_disk_space(run_dir: Path, parameters: int) -> None:
    """Refuse to start when the disk cannot hold the checkpoints: best.pt, and last.pt with its optimizer state,
    each written beside the one it replaces."""
    needed = parameters * 4 * (1 + 3) * 2
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        raise LowmedError(
            f"run dir {run_dir}: {free / 2**20:.0f} MB free, but the checkpoints of this model need "
            f"about {needed / 2**20:.0f} MB; free some space or choose another --out"
        )


def _input_contract(report: WeightsReport, spec, config: TrainConfig) -> Preprocessing:
    """What the network is fed: the weights' contract (a lowmed run's or torchxrayvision's, else the model's), with
    the run's own image size and any --input-channels / --input-norm."""
    source = Preprocessing.from_dict(report.source_preprocessing) if report.source_preprocessing else spec.preprocessing
    assert config.image_size is not None  # _resolved fills it
    return source.with_input(config.image_size, config.input_channels, config.input_norm)


def _pretraining_overlap(
    report: WeightsReport, dataset: PreparedDataset, name: str | None, say: bool, strict: bool
) -> dict | None:
    """For weights whose training data is known: whether the target may be among it. A lowmed run's images are
    checked one by one (refused when they reach the target's val or test split, ``lowmed.data.leakage``); a
    published weight's datasets by name (warned, if ``say``)."""
    if report.source == "run" and report.path is not None:
        return _run_weights_overlap(Path(report.path), dataset, say, strict)
    if report.trained_on is None:
        return None
    target = name or FORMAT_DATASETS.get(dataset.source_format)
    result = overlap(report.trained_on, target)
    if result["status"] == "possible" and say:
        warn_or_refuse(
            f"--weights {report.name} was pretrained on {', '.join(result['weights_trained_on'])}, which includes "
            f"{target}, the target's source: its validation and test images may have been seen in pretraining "
            "(pretraining_overlap: possible in train.json)",
            strict,
        )
    return result


def _run_weights_overlap(run_dir: Path, dataset: PreparedDataset, say: bool, strict: bool) -> dict:
    """``--weights RUN_DIR``: the images that run trained on, and chose its checkpoint with, against the target."""
    shaping = run_shaping_rows(run_dir)
    trained_on = [RunDir(run_dir).read_summary().dataset.name]
    if shaping is None:
        if say:
            warn_or_refuse(
                f"--weights {run_dir}: the data it was trained on is no longer where its train.json says; whether "
                f"it saw images of {dataset.root}'s val or test split cannot be checked",
                strict,
            )
        return {"status": "unknown", "weights_trained_on": trained_on, "target": dataset.root.name}
    trained, selected = shaping
    checked = guard_pretraining(trained, dataset, f"--weights {run_dir}", strict, selected, say)
    return {
        "status": CHECKED_NONE,
        "weights_trained_on": trained_on,
        "target": dataset.root.name,
        "kept_from_train": checked.kept_from_train,
    }


def _check_source_model(report: WeightsReport, model: str) -> None:
    if report.source_model and report.source_model != model:
        raise LowmedError(f"--weights {report.path}: trained as {report.source_model}, but --model is {model}")


def _load_splits(dataset: PreparedDataset, image_size: int, device: torch.device, strict: bool) -> dict:
    """The train and val images, decoded once (on a GPU, kept there), with their targets."""
    uncertain = dataset.info.uncertain_policy
    splits = {}
    for name in ("train", "val"):
        frame = dataset.split(name)
        if frame.empty:
            raise LowmedError(
                f"{dataset.manifest_path}: no {name} rows; expected a prepared dataset with a {name} split"
            )
        targets, mask = label_tensors(frame, dataset.task, dataset.classes, uncertain)
        split = load_split(dataset.image_paths(frame), targets, mask, image_size)
        _report_unreadable(name, split, dataset, strict)
        if device.type == "cuda" and split.pixels is not None:
            split.pixels = split.pixels.to(device)  # decoded once, then no host-to-GPU copies
        splits[name] = split
    return splits


def _report_unreadable(name: str, split, dataset: PreparedDataset, strict: bool) -> None:
    """Files broken since prepare are skipped with a warning; a run that would lose too many, or every image of a
    class, stops."""
    if split.unreadable:
        warn_or_refuse(
            f"{len(split.unreadable)} {name} image(s) could not be read and were skipped "
            f"(e.g. {split.unreadable[0]}); they changed after prepare",
            strict,
        )
        if too_many_unreadable(split):
            raise RunFailed(
                f"{len(split.unreadable)} {name} images are unreadable — too many to go on; run 'lowmed prepare' again"
            )
        if dataset.task != "multilabel":
            present = torch.bincount(split.targets, minlength=len(dataset.classes))
            lost = [c for c, count in zip(dataset.classes, present.tolist()) if count == 0]
            if lost:
                raise RunFailed(
                    f"no readable {name} image of class(es) {', '.join(map(repr, lost))} is left; "
                    "run 'lowmed prepare' again"
                )


def _summary(
    config: TrainConfig,
    dataset: PreparedDataset,
    report: WeightsReport,
    preprocessing: dict,
    device: torch.device,
    parameters: int,
    dist: Distributed,
) -> TrainSummary:
    counts = dataset.subset.counts if dataset.subset else dataset.info.counts
    assert config.out is not None and config.arm is not None  # _resolved fills them
    return TrainSummary(
        run_dir=config.out,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        arm=config.arm,
        model=config.model,
        parameters=parameters,
        weights=report,
        weight_source=report.source,
        dataset=DatasetRef(
            prepared_dir=str(dataset.root),
            task=dataset.task,
            classes=dataset.classes,
            manifest_sha256=sha256_file(dataset.root / MANIFEST),
            subset=config.subset,
            subset_sha256=sha256_file(dataset.manifest_path) if dataset.subset else None,
            per_class=config.per_class,
            train_counts=counts.get("train"),
            val_counts=counts.get("val"),
        ),
        seed=config.seed,
        preprocessing=preprocessing,
        device=str(device),
        device_name=device_name(device),
        cpu_threads=torch.get_num_threads(),  # the order CPU sums run in: same threads, same run to the last bit
        amp=bool(config.amp),
        processes=dist.world_size,
        global_batch_size=config.batch_size * dist.world_size * config.accumulate,
        versions=software_versions(),
    )
