"""The command line as a user meets it: exit codes, one-line errors, tracebacks only with --debug."""

import json
import logging
import subprocess
import sys

import pytest

import lowmed
from lowmed.cli import main
from lowmed.config import TrainConfig


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_version_and_help(capsys):
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.strip() == f"lowmed {lowmed.__version__}"
    code, out, _ = run_cli(capsys, "-h")
    assert code == 0 and "prepare" in out and "subsample" in out


def test_prepare_then_subsample(capsys, kermany, tmp_path):
    code, out, err = run_cli(capsys, "prepare", str(kermany), "--out", str(tmp_path / "p"), "-q")
    assert code in (0, None), err
    assert "NORMAL" in out and "manifest.csv" in out
    code, out, err = run_cli(capsys, "subsample", str(tmp_path / "p"), "--per-class", "7", "--seed", "2", "-q")
    assert code in (0, None), err
    assert (tmp_path / "p" / "subsets" / "subset-7-seed2.csv").is_file()
    assert "7" in out


@pytest.mark.parametrize(
    "args, culprit",
    [
        (["prepare", "/no/such/dir"], "/no/such/dir: no such file or folder"),
        (["prepare", ".", "--format", "dicom"], "--format 'dicom' is not known"),
        (["subsample", "/no/such/dir", "--per-class", "5"], "/no/such/dir: no such file or folder"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, args, culprit):
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and culprit in lines[0] and "Traceback" not in err


def test_per_class_below_one(capsys, kermany, tmp_path):
    run_cli(capsys, "prepare", str(kermany), "--out", str(tmp_path / "p"), "-q")
    code, _, err = run_cli(capsys, "subsample", str(tmp_path / "p"), "--per-class", "0")
    assert code == 2 and "--per-class 0" in err


def test_debug_shows_traceback(capsys):
    code, _, err = run_cli(capsys, "--debug", "prepare", "/no/such/dir")
    assert code == 2 and "Traceback" in err


def test_an_unforeseen_failure_with_debug_shows_the_traceback_and_no_hint(capsys, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("simulated")

    monkeypatch.setattr("lowmed.data.prepare.prepare", crash)
    code, _, err = run_cli(capsys, "--debug", "prepare", ".")
    assert code == 1 and "Traceback" in err and "RuntimeError: simulated" in err and "--debug for" not in err
    code, _, err = run_cli(capsys, "prepare", ".")
    assert code == 1 and "Traceback" not in err and err.strip().endswith("(run with --debug for the traceback)")


def test_the_used_by_commands_run_as_typed(capsys, kermany, tmp_path, monkeypatch):
    """subsample a raw folder, then train with no DATA (the subset just drawn), then compare: in a fresh folder."""
    monkeypatch.chdir(tmp_path)

    def typed(*args):
        code, _, err = run_cli(capsys, *args)
        assert code in (0, None), (args, err)
        return err

    typed("subsample", str(kermany), "--per-class", "6", "-q")
    said = typed("train", "--epochs", "1", "--image-size", "32", "-q")
    subset = (tmp_path / "lowmed-data" / "chest_xray" / "subsets" / "subset-6-seed0.csv").resolve()
    assert f"no DATA given: took {subset}" in said.replace("\n", "")
    run = tmp_path / "runs" / "chest_xray-simplecnn-scratch-n6-seed0"
    assert json.loads((run / "train.json").read_text())["dataset"]["chosen"].startswith("no DATA given: took")
    typed("compare", "runs/", "--resamples", "50", "-q")
    assert (tmp_path / "runs" / "compare.csv").is_file()


@pytest.mark.parametrize(
    "args, culprit",
    [
        (["subsample", "somewhere"], "Missing option '--per-class'"),
        (["subsample", "somewhere", "--per-class", "abc"], "Invalid value for '--per-class'"),
        (["train", "--bogus"], "No such option: --bogus"),
    ],
)
def test_usage_errors_are_one_line_exit_2(capsys, args, culprit):
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and err.strip().splitlines() == [err.strip()] and culprit in err
    assert f"(lowmed {args[0]} -h lists the options)" in err


def test_bare_lowmed_shows_the_help(capsys):
    code, out, err = run_cli(capsys)
    assert code == 2 and "prepare" in out + err and "error" not in err


def test_python_dash_m():
    result = subprocess.run([sys.executable, "-m", "lowmed", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"lowmed {lowmed.__version__}"


def test_train_then_finetune_from_the_command_line(capsys, kermany, tmp_path):
    run_cli(capsys, "prepare", str(kermany), "--out", str(tmp_path / "p"), "-q")
    common = ["--image-size", "32", "--batch-size", "16", "-q"]
    code, out, err = run_cli(
        capsys,
        "train",
        str(tmp_path / "p"),
        "--per-class",
        "20",
        "--epochs",
        "2",
        "--lr",
        "1e-3",
        "--out",
        str(tmp_path / "a"),
        *common,
    )
    assert code == 0, err
    assert "simplecnn" in out and "best epoch" in out
    code, out, err = run_cli(
        capsys,
        "finetune",
        str(tmp_path / "a"),
        str(tmp_path / "p"),
        "--epochs",
        "1",
        "--fine-tune-epochs",
        "1",
        "--out",
        str(tmp_path / "c"),
        *common,
    )
    assert code == 0, err
    assert "frozen → finetune" in out


def test_train_config_file_and_flags(capsys, kermany, tmp_path):
    run_cli(capsys, "prepare", str(kermany), "--out", str(tmp_path / "p"), "-q")
    (tmp_path / "run.yaml").write_text(f"data: {tmp_path / 'p'}\nepochs: 1\nimage_size: 32\nbatch_size: 8\n")
    code, _, err = run_cli(
        capsys, "train", "--config", str(tmp_path / "run.yaml"), "--epochs", "2", "--out", str(tmp_path / "a"), "-q"
    )
    assert code == 0, err
    saved = (tmp_path / "a" / "config.yaml").read_text()
    assert "epochs: 2" in saved and "batch_size: 8" in saved
    code, _, err = run_cli(capsys, "train", "--config", str(tmp_path / "a" / "config.yaml"), "-q")
    assert code == 2 and "exists; continue it with --resume" in err


@pytest.mark.parametrize(
    "args, culprit",
    [
        (["train", "--epochs", "0", "/tmp"], "--epochs 0: expected at least 1"),
        (["train", "--model", "resnet51", "/tmp"], "--model 'resnet51' is not known"),
        (["train", "--resume", "/no/such/run"], "--resume /no/such/run: no config.yaml"),
        (["finetune", "/no/such/run", "/tmp"], "SOURCE /no/such/run: no such run dir or checkpoint file"),
    ],
)
def test_train_bad_input_exit_2(capsys, args, culprit):
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and culprit in err and len(err.strip().splitlines()) == 1


def test_evaluate_prints_the_table_and_writes_reports(capsys, trained_run, tmp_path):
    code, out, err = run_cli(
        capsys, "evaluate", str(trained_run), "--bootstrap", "50", "--out", str(tmp_path / "e"), "-q"
    )
    assert code == 0, err
    assert "auroc" in out and "95% CI" in out and (tmp_path / "e" / "metrics.json").is_file()
    code, _, err = run_cli(capsys, "evaluate", "--checkpoint", str(trained_run / "nothing.pt"))
    assert code == 2 and "no such checkpoint" in err


def test_prepare_demo_writes_both_demo_datasets(capsys, tmp_path):
    code, out, err = run_cli(capsys, "prepare", "--demo", "--out", str(tmp_path / "demo"), "-q")
    assert code == 0, err
    assert (tmp_path / "demo" / "target" / "manifest.csv").is_file()
    assert (tmp_path / "demo" / "corpus" / "manifest.csv").is_file()
    assert "PNEUMONIA" in out and "opacity" in out


def test_model_names_never_wrap_piped_or_in_a_narrow_terminal(capsys, monkeypatch):
    from lowmed.cli import _render
    from lowmed.models.registry import MODELS

    with pytest.raises(SystemExit):
        main(["models"])
    lines = capsys.readouterr().out.splitlines()  # piped: each row on a line of its own
    for name in MODELS:
        assert any(f" {name} " in line for line in lines), name
    monkeypatch.setattr(_render.stdout, "width", 50)
    with pytest.raises(SystemExit):
        main(["models"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" · ")[0] for line in lines] == list(MODELS)  # plain lines, whole names


@pytest.fixture
def fresh_logging():
    """The ``lowmed`` logger as a Python user finds it (no handler of lowmed's, no level), put back afterwards."""
    from lowmed.console import log

    kept = (list(log.handlers), log.propagate, log.level)
    log.handlers, log.propagate = [], True
    log.setLevel(logging.NOTSET)
    yield log
    log.handlers, log.propagate = kept[0], kept[1]
    log.setLevel(kept[2])


def test_progress_lines_show_by_default_and_not_with_quiet_or_from_python(capsys, separable, tmp_path, fresh_logging):
    train = ["train", str(separable), "--epochs", "1", "--image-size", "32", "--lr", "0.002"]
    code, _, said = run_cli(capsys, *train, "--out", str(tmp_path / "default"))
    assert code in (0, None) and "epoch   1" in said
    code, _, said = run_cli(capsys, *train, "--out", str(tmp_path / "quiet"), "-q")
    assert code in (0, None) and "epoch" not in said and str(tmp_path / "quiet") not in said

    fresh_logging.handlers, fresh_logging.propagate = [], True
    fresh_logging.setLevel(logging.NOTSET)
    lowmed.train(TrainConfig(data=str(separable), epochs=1, image_size=32, out=str(tmp_path / "python")))
    assert capsys.readouterr().err == ""  # a library says nothing below a warning unless asked to


def test_a_nested_call_shows_warnings_its_caller_shows_its_lines_and_verbose_shows_all(capsys, fresh_logging):
    from lowmed.console import log_to_terminal, nested, progress_bar

    caller, inner = logging.getLogger("lowmed.experiment.execute"), logging.getLogger("lowmed.training.loop")
    log_to_terminal(logging.INFO)
    with nested(caller):
        caller.info("[1/2] a run: trained")
        inner.info("epoch 1")
        inner.warning("a warning")
        assert progress_bar().disable
    inner.info("epoch 2")
    said = capsys.readouterr().err
    assert "[1/2] a run: trained" in said and "warning: a warning" in said and "epoch 2" in said
    assert "epoch 1" not in said and caller.level == logging.NOTSET and fresh_logging.level == logging.INFO

    log_to_terminal(logging.DEBUG)  # -v
    with nested(caller):
        inner.info("epoch 1")
    with nested():  # a torchrun process other than the first: warnings only, even with -v
        inner.info("from process 1")
        inner.warning("process 1 warns")
    said = capsys.readouterr().err
    assert "epoch 1" in said and "from process 1" not in said and "process 1 warns" in said


def test_every_commands_help_wraps_its_paragraphs_to_the_terminal(capsys, monkeypatch):
    """Each paragraph of a command's description is one line on a wide terminal: the source's line breaks are not
    kept, so a narrow terminal wraps it once."""
    import inspect

    from lowmed.cli import app

    monkeypatch.setenv("COLUMNS", "2000")
    for command in app.registered_commands:
        code, out, _ = run_cli(capsys, command.name, "--help")
        lines = [line.strip() for line in out.splitlines()]
        for paragraph in inspect.cleandoc(command.callback.__doc__).split("\n\n"):
            words = " ".join(paragraph.split()).replace("\\[", "[")
            assert code == 0 and words in lines, (command.name, words)
