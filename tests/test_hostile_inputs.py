"""Bad input, round three: the newer commands keep lowmed's promise — one line and exit 2 for bad input, exit 1 for a
failure during a run, no traceback, nothing at the output changed — and one bad file never sinks a batch. Each kind
is tried through ``main`` in this process, as a user would meet it."""

import json

import pandas as pd
import PIL.Image
import pytest
import yaml

from lowmed.cli import main
from lowmed.contracts import PredictionRecord, RunDir
from tests.factory import write_image


def refused(capsys, args: list, code: int = 2) -> str:
    """Run ``lowmed ARGS``: it must exit ``code`` with one line on stderr and no traceback; returns that line."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in args])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == code, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def snapshot(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def unfinished(trained_run, tmp_path):
    """A copy of a run whose train.json says it was stopped."""
    import shutil

    copy = shutil.copytree(trained_run, tmp_path / "stopped")
    summary = json.loads((copy / "train.json").read_text())
    (copy / "train.json").write_text(json.dumps({**summary, "status": "interrupted", "run_dir": str(copy)}))
    return copy


def test_one_decompression_bomb_among_good_images_gets_its_row_and_reason(trained_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1500)  # 32 px images pass; a 100 px one is a "bomb"
    folder = tmp_path / "new"
    good = [write_image(folder / f"{k}.png", 300 + k) for k in range(3)]
    write_image(folder / "bomb.png", 999, size=100)
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(trained_run), str(folder), "--out", str(tmp_path / "p.csv"), "-q"])
    assert exit_info.value.code == 0
    import pandas as pd

    table = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    reasons = dict(zip(table["path"], table["error"]))
    assert reasons[str(folder / "bomb.png")].startswith("decompression bomb refused")
    assert all(reasons[str(path)] == "" for path in good)


def test_predict_and_export_say_when_the_run_did_not_finish(unfinished, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(unfinished), str(write_image(tmp_path / "x.png", 1)), "--out", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 0 and "did not finish (interrupted" in err and "lowmed train --resume" in err
    assert PredictionRecord.read(tmp_path / "p.json").run_status == "interrupted"
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(unfinished), "--format", "torchscript", "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 0 and "did not finish (interrupted" in err
    card = (tmp_path / "e" / "MODEL_CARD.md").read_text()
    assert "The run did not finish (interrupted" in card and "Best epoch ?" not in card


def test_export_overwrite_replaces_only_an_earlier_export(trained_run, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    before = snapshot(mine)
    line = refused(capsys, ["export", trained_run, "--format", "torchscript", "--out", mine, "--overwrite"])
    assert "not an earlier lowmed export" in line and snapshot(mine) == before
    out = tmp_path / "export"
    for _ in range(2):  # an earlier export is replaced whole
        with pytest.raises(SystemExit) as exit_info:
            main(["export", str(trained_run), "--format", "torchscript", "--out", str(out), "--overwrite", "-q"])
        assert exit_info.value.code == 0
    assert (out / "model.pt").is_file()


def test_predict_refuses_an_output_beside_which_it_cannot_write(trained_run, tmp_path, capsys):
    image = write_image(tmp_path / "x.png", 1)
    (tmp_path / "taken.json").mkdir()  # where the sidecar would go
    line = refused(capsys, ["predict", trained_run, image, "--out", tmp_path / "taken.csv"])
    assert "is a folder; expected a file name" in line and not (tmp_path / "taken.csv").exists()
    assert RunDir(trained_run).summary.is_file()


def test_overwrite_replaces_only_what_lowmed_wrote(separable, tmp_path, capsys):
    """train, pretrain and prepare --overwrite: a folder of someone else's files is refused and left as it was."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    before = snapshot(mine)
    train = ["train", separable, "--epochs", "1", "--image-size", "32", "--out", mine, "--overwrite"]
    assert "not a lowmed run" in refused(capsys, train)
    assert "not a prepared dataset" in refused(capsys, ["prepare", separable, "--out", mine, "--overwrite"])
    pretrain = ["pretrain", separable, "--target", separable, "--out", mine, "--overwrite"]
    refused(capsys, pretrain)  # a labelled dataset is no corpus, and the folder is not a run either way
    assert snapshot(mine) == before


def test_outputs_that_cannot_be_written_are_refused_before_any_work(trained_run, separable, tmp_path, capsys):
    """A file where a folder should be (a read-only mount answers the same way: tried by hand as root)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    image = write_image(tmp_path / "x.png", 1)
    space = tmp_path / "space.yaml"
    space.write_text("space:\n  lr: {low: 1.0e-4, high: 1.0e-2, log: true}\ntrials: 2\n")
    cases = [
        ["tune", separable, "--space", space, "--per-class", "5", "--image-size", "32", "--out", blocker / "t"],
        [
            "predict",
            trained_run,
            image,
            "--out",
            tmp_path / "p.csv",
            "--explain",
            "occlusion",
            "--explain-dir",
            blocker / "x",
        ],
        ["export", trained_run, "--out", blocker / "e"],
        ["compare", trained_run, "--out", blocker / "c"],
        ["subsample", separable, "--per-class", "5", "--out", blocker / "s.csv"],
    ]
    for args in cases:
        assert "is a file; expected a folder" in refused(capsys, args), args
    assert not (tmp_path / "p.csv").exists()  # predict refused before it predicted


def test_ctrl_c_after_a_runs_last_batch_still_stops_the_tuning_and_the_study(separable, kermany, tmp_path, monkeypatch):
    """A Ctrl-C that lands after a run's last batch used to be lost: the tuning went on with its next trial."""
    from lowmed import interrupts
    from lowmed.errors import Interrupted
    from lowmed.tuning import TuneSettings, TuningCell, tune_cell

    monkeypatch.setattr(interrupts._STOP_ASKED, "is_set", lambda: True)
    settings = TuneSettings.from_dict({"space": {"lr": [0.001]}, "trials": 2}, "tune")
    cell = TuningCell("c", {"data": str(separable), "image_size": 32, "epochs": 1}, tmp_path / "cell")
    with pytest.raises(Interrupted, match="run the same command again to go on, with the finished trials kept"):
        tune_cell(cell, settings)
    assert not (tmp_path / "cell" / "trial-000").exists()
    study = tmp_path / "study.yaml"
    dataset = {"name": "cxr", "data": str(kermany), "prepare": {"min_val_per_class": 4}}
    arms = [{"name": "A", "model": "simplecnn"}]
    values = {"name": "s", "out": str(tmp_path / "out"), "datasets": [dataset], "arms": arms, "per_class": [5]}
    study.write_text(yaml.safe_dump({**values, "seeds": [0]}))
    from lowmed import run_experiment

    with pytest.raises(Interrupted, match=f"continue it with: lowmed experiment {study}"):
        run_experiment(study)


def test_ctrl_c_anywhere_else_is_one_line_and_exit_130(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("lowmed.data.prepare.prepare", interrupted)
    assert "interrupted (Ctrl-C)" in refused(capsys, ["prepare", "/tmp", "--out", "/tmp/never-written"], code=130)


@pytest.mark.parametrize("device", ["tpu", "", "cuda:x", "cpu:1"])
def test_a_device_that_is_no_device_name_is_refused_naming_the_choices(trained_run, device, capsys):
    line = refused(capsys, ["evaluate", trained_run, "--device", device])
    assert line == f"error: --device {device!r}: expected auto, cpu, cuda, cuda:N (one GPU by its index) or mps"


def test_a_gpu_this_machine_lacks_is_refused(trained_run, separable, tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "cuda:1: no CUDA device is available here" in refused(
        capsys, ["evaluate", trained_run, "--device", "cuda:1"]
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    line = refused(capsys, ["train", separable, "--device", "cuda:2", "--out", tmp_path / "run"])
    assert "--device cuda:2: this machine has 2 CUDA device(s), cuda:0 to cuda:1" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "url, said",
    [
        ("notaurl", "expected a database URL such as sqlite:///tuning.db"),
        ("sqlite:////no/such/folder/optuna.db", "the folder /no/such/folder does not exist"),
        ("postgresql://me:secret@localhost/db", "install the database driver: pip install psycopg2-binary"),
    ],
)
def test_a_tuning_storage_that_does_not_open_is_refused_saying_what_to_do(separable, tmp_path, url, said, capsys):
    (tmp_path / "space.yaml").write_text("space:\n  lr: {low: 0.0001, high: 0.01, log: true}\n")
    out = tmp_path / "tuned"
    line = refused(capsys, ["tune", separable, "--space", tmp_path / "space.yaml", "--storage", url, "--out", out])
    assert said in line and "secret" not in line and not out.exists()


def test_text_files_are_read_as_utf8_or_utf16_and_others_refused_naming_the_byte(trained_run, tmp_path, capsys):
    (tmp_path / "latin1.yaml").write_bytes("arm: é\nepochs: 1\n".encode("latin-1"))
    line = refused(capsys, ["train", trained_run.parent, "--config", tmp_path / "latin1.yaml"])
    assert "latin1.yaml: not UTF-8 text (byte 0xe9 on line 1; Latin-1 or Windows-1252?); save it as UTF-8" in line
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)))
    assert "not a text file" in refused(capsys, ["train", trained_run.parent, "--config", tmp_path / "binary.yaml"])
    images = [write_image(tmp_path / "in" / f"{k}.png", 700 + k) for k in range(3)]
    listing = tmp_path / "images.csv"
    listing.write_text("path\n" + "\n".join(map(str, images)) + "\n", encoding="utf-16")  # as Excel saves "Unicode"
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(trained_run), str(listing), "--out", str(tmp_path / "p.csv"), "-q"])
    assert exit_info.value.code == 0 and len(pd.read_csv(tmp_path / "p.csv")) == 3


def test_a_yaml_alias_bomb_makes_one_short_line(separable, tmp_path, capsys):
    """231 bytes that expand to millions of characters: the message quotes the value shortened."""
    levels = ['&a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    levels += [f"&{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcd", "bcde")]
    (tmp_path / "bomb.yaml").write_text(f"epochs: [{', '.join(levels)}, [{', '.join(['*e'] * 9)}]]\n")
    line = refused(capsys, ["train", separable, "--config", tmp_path / "bomb.yaml", "--out", tmp_path / "run"])
    assert len(line) < 500 and line.endswith("is not a valid int") and not (tmp_path / "run").exists()
