import os

import numpy as np
import pytest

from lowmed import prepare, subsample
from lowmed.data.manifest import PreparedDataset
from lowmed.errors import LowmedError
from tests.factory import make_kermany


@pytest.fixture(scope="module")
def prepared(kermany, tmp_path_factory):
    return prepare(kermany, tmp_path_factory.mktemp("prep") / "kermany", min_val_per_class=4).root


@pytest.fixture(scope="module")
def prepared_ham(ham, tmp_path_factory):
    return prepare(ham, tmp_path_factory.mktemp("prep") / "ham").root


@pytest.fixture(scope="module")
def prepared_chexpert(chexpert, tmp_path_factory):
    return prepare(chexpert, tmp_path_factory.mktemp("prep") / "cx").root


def train_paths(subset):
    return set(subset.dataset.split("train")["path"])


def test_exact_n_per_class_and_val_test_untouched(prepared, tmp_path):
    subset = subsample(prepared, 10, seed=0, out=tmp_path / "s.csv")
    full = PreparedDataset.load(prepared)
    train = subset.dataset.split("train")
    assert train["label"].value_counts().to_dict() == {"NORMAL": 10, "PNEUMONIA": 10}
    for split in ("val", "test"):
        assert subset.dataset.split(split).equals(full.split(split))
    assert subset.dataset.subset.per_class == 10 and subset.dataset.subset.seed == 0
    assert subset.warnings == []


def test_nested_deterministic_and_seed_dependent(prepared, tmp_path):
    sizes = [3, 8, 15, 30]
    subsets = [train_paths(subsample(prepared, n, seed=1, out=tmp_path / f"a{n}.csv")) for n in sizes]
    for smaller, larger in zip(subsets, subsets[1:]):
        assert smaller < larger
    again = train_paths(subsample(prepared, 8, seed=1, out=tmp_path / "b.csv"))
    other = train_paths(subsample(prepared, 8, seed=2, out=tmp_path / "c.csv"))
    assert again == subsets[1] and other != subsets[1]


def test_picks_spread_over_patients(prepared, tmp_path):
    dataset = PreparedDataset.load(prepared)
    train = dataset.split("train")
    patients = train[train["label"] == "PNEUMONIA"]["group"].nunique()
    subset = subsample(prepared, patients, out=tmp_path / "s.csv")
    picked = subset.dataset.split("train")
    assert picked[picked["label"] == "PNEUMONIA"]["group"].nunique() == patients


def test_shortfall_warns_and_strict_refuses(prepared_ham, tmp_path):
    subset = subsample(prepared_ham, 1000, out=tmp_path / "s.csv")
    counts = PreparedDataset.load(prepared_ham).info["counts"]["train"]
    assert subset.dataset.split("train")["label"].value_counts().to_dict() == counts
    assert len(subset.warnings) == 7 and "all are used" in subset.warnings[0]
    with pytest.raises(LowmedError, match="--per-class 1000 --strict: class 'akiec' has only"):
        subsample(prepared_ham, 1000, strict=True, out=tmp_path / "t.csv")


def test_multilabel_means_about_n_positives_per_finding_and_is_nested(prepared_chexpert, tmp_path):
    small = subsample(prepared_chexpert, 2, out=tmp_path / "a.csv")
    large = subsample(prepared_chexpert, 4, out=tmp_path / "b.csv")
    assert train_paths(small) <= train_paths(large)
    train = large.dataset.split("train")
    positives = (train[large.dataset.classes] == 1).sum()
    available = (PreparedDataset.load(prepared_chexpert).split("train")[large.dataset.classes] == 1).sum()
    assert (positives >= np.minimum(4, available)).all()
    assert len(train) < len(PreparedDataset.load(prepared_chexpert).split("train"))


def test_raw_dataset_is_prepared_first(kermany, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    subset = subsample(kermany, 5)
    assert subset.path == (tmp_path / "lowmed-data" / "chest_xray" / "subsets" / "subset-5-seed0.csv").resolve()
    again = subsample(kermany, 5)  # reuses the prepared dir
    assert train_paths(again) == train_paths(subset)


def test_materialize_writes_folder_tree(prepared, tmp_path):
    subsample(prepared, 4, out=tmp_path / "s.csv", materialize=tmp_path / "tree")
    assert len(list((tmp_path / "tree" / "train" / "NORMAL").iterdir())) == 4
    assert len(list((tmp_path / "tree" / "test" / "PNEUMONIA").iterdir())) == 20
    linked = next((tmp_path / "tree" / "train" / "NORMAL").iterdir())
    assert os.stat(linked).st_nlink >= 1 and linked.stat().st_size > 0
    with pytest.raises(LowmedError, match="folder is not empty"):
        subsample(prepared, 4, out=tmp_path / "s.csv", materialize=tmp_path / "tree")


def test_materialize_refuses_multilabel(prepared_chexpert, tmp_path):
    with pytest.raises(LowmedError, match="needs single-label data"):
        subsample(prepared_chexpert, 2, out=tmp_path / "s.csv", materialize=tmp_path / "tree")


@pytest.mark.parametrize("n", [0, -3])
def test_n_must_be_positive(prepared, n):
    with pytest.raises(LowmedError, match=f"--per-class {n}: expected a positive number"):
        subsample(prepared, n)


def test_subset_of_unknown_location_is_refused(tmp_path):
    with pytest.raises(LowmedError, match="no such file or folder"):
        subsample(tmp_path / "nothing", 5)
    make_kermany(tmp_path / "src", {"train": {"NORMAL": 2, "PNEUMONIA": 2}})
    with pytest.raises(LowmedError, match="not a prepared dataset dir or subset manifest"):
        PreparedDataset.load(next((tmp_path / "src").rglob("*.jpeg")))
