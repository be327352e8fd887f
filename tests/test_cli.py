"""The command line as a user meets it: exit codes, one-line errors, tracebacks only with --debug."""

import subprocess
import sys

import pytest

import lowmed
from lowmed.cli import main


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


@pytest.mark.parametrize("args, culprit", [
    (["prepare", "/no/such/dir"], "/no/such/dir: no such file or folder"),
    (["prepare", ".", "--format", "dicom"], "--format 'dicom' is not known"),
    (["subsample", "/no/such/dir", "--per-class", "5"], "/no/such/dir: no such file or folder"),
])
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


def test_usage_error_exit_2(capsys):
    code, _, err = run_cli(capsys, "subsample", "somewhere")
    assert code == 2 and "--per-class" in err


def test_python_dash_m():
    result = subprocess.run([sys.executable, "-m", "lowmed", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"lowmed {lowmed.__version__}"
