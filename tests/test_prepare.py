import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from lowmed import prepare
from lowmed.contracts import DatasetInfo
from lowmed.data.formats import CsvColumns, kermany_group
from lowmed.data.manifest import PreparedDataset
from lowmed.errors import LowmedError
from tests.factory import image_array, make_kermany, write_broken_files, write_image


def split_groups(manifest):
    return {s: set(manifest.loc[manifest["split"] == s, "group"]) for s in ("train", "val", "test")}


@pytest.mark.parametrize(
    "name, group",
    [
        ("person123_bacteria_456.jpeg", "person123"),
        ("person1661_virus_2872.jpeg", "person1661"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("NORMAL2-IM-0115-0001.jpeg", "IM-0115"),
        ("IM-0011-0001-0001.jpeg", "IM-0011"),
        ("scan.png", None),
    ],
)
def test_kermany_group_from_file_name(name, group):
    assert kermany_group(name) == group


def test_kermany_tree_small_val_is_rebuilt_by_patient(kermany, tmp_path):
    dataset = prepare(kermany, tmp_path / "out")
    manifest, info = dataset.manifest, dataset.info
    assert dataset.task == "binary" and dataset.classes == ["NORMAL", "PNEUMONIA"]
    assert len(manifest) == 128
    # the given test split is kept exactly
    assert info["counts"]["test"] == {"NORMAL": 20, "PNEUMONIA": 20}
    assert set(manifest.loc[manifest["split"] == "test", "path"]) == {
        str(p.resolve()) for p in (kermany / "test").rglob("*.jpeg")
    }
    # 4+4 val images are too few: folded into train, a new val of >= 20 per class made by patient
    assert "folded into train" in info.splits.val_rebuilt and info.splits.origin["val"] == "made"
    assert info["counts"]["val"]["NORMAL"] >= 20 and info["counts"]["val"]["PNEUMONIA"] >= 20
    assert info["counts"]["train"]["NORMAL"] + info["counts"]["val"]["NORMAL"] == 44
    groups = split_groups(manifest)
    assert not groups["train"] & groups["val"]
    assert (tmp_path / "out" / "dataset.yaml").is_file()


def test_given_val_kept_when_large_enough(tmp_path):
    src = make_kermany(
        tmp_path / "src",
        {
            "train": {"NORMAL": 30, "PNEUMONIA": 30},
            "val": {"NORMAL": 6, "PNEUMONIA": 6},
            "test": {"NORMAL": 5, "PNEUMONIA": 5},
        },
    )
    dataset = prepare(src, tmp_path / "out", min_val_per_class=5)
    assert dataset.info["splits"]["origin"] == {"train": "given", "val": "given", "test": "given"}
    assert dataset.info["counts"]["val"] == {"NORMAL": 6, "PNEUMONIA": 6}


def test_class_folder_case_differs_across_splits(tmp_path):
    src = make_kermany(
        tmp_path / "src", {"train": {"NORMAL": 6, "PNEUMONIA": 6}, "test": {"Normal": 3, "Pneumonia": 3}}
    )
    dataset = prepare(src, tmp_path / "out", min_val_per_class=1)
    assert dataset.classes == ["NORMAL", "PNEUMONIA"]
    assert dataset.info["counts"]["test"] == {"NORMAL": 3, "PNEUMONIA": 3}


def test_labels_differing_by_case_or_spaces_are_refused_or_merged_when_asked(tmp_path):
    for index in range(40):
        write_image(tmp_path / f"{index}.png", index)
    labels = ["NORMAL", "normal", " NORMAL", "PNEUMONIA"]
    source = tmp_path / "labels.csv"
    source.write_text("path,label\n" + "".join(f"{i}.png,{labels[i % 4]}\n" for i in range(40)))
    with pytest.raises(LowmedError, match="'NORMAL' \\(10\\) and 'normal' \\(10\\) and ' NORMAL' \\(10\\)"):
        prepare(source, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    dataset = prepare(source, tmp_path / "out", normalize_labels=True, min_val_per_class=2)
    assert dataset.classes == ["NORMAL", "PNEUMONIA"] and dataset.task == "binary"
    assert sum(dataset.info["counts"][split]["NORMAL"] for split in dataset.info["counts"]) == 30
    assert any("'normal' → 'NORMAL'" in note for note in dataset.info["notes"])


def test_made_splits_far_from_the_fractions_asked_are_said(tmp_path):
    for index in range(60):
        write_image(tmp_path / f"{index}.png", index)
    source = tmp_path / "labels.csv"
    source.write_text("path,label\n" + "".join(f"{i}.png,{'AB'[i % 2]}\n" for i in range(60)))
    dataset = prepare(source, tmp_path / "out")
    val = dataset.info["counts"]["val"]
    assert sum(val.values()) > 20  # the floor of --min-val-per-class 20, capped at half of each class
    assert any(w.startswith(f"val split: {sum(val.values())} of 60 images") for w in dataset.info["warnings"])
    with pytest.raises(LowmedError, match="--strict: val split"):
        prepare(source, tmp_path / "strict", strict=True)
    assert not (tmp_path / "strict").exists()


def test_bad_files_excluded_with_reasons_and_odd_modes_accepted(tmp_path):
    src = make_kermany(tmp_path / "src", {"train": {"NORMAL": 10, "PNEUMONIA": 10}})
    broken = write_broken_files(src / "train" / "NORMAL")
    odd = {
        mode: write_image(src / "train" / "PNEUMONIA" / f"odd_{mode.replace(';', '')}.png", 500 + i, mode=mode)
        for i, mode in enumerate(["I;16", "RGBA", "P", "LA"])
    }
    cmyk = src / "train" / "PNEUMONIA" / "cmyk.jpg"
    Image.fromarray(image_array(600)).convert("CMYK").save(cmyk)
    dataset = prepare(src, tmp_path / "out", min_val_per_class=1)
    excluded = {item["path"]: item["reason"] for item in dataset.info["excluded"]}
    assert excluded[str(broken["zero"].resolve())] == "empty file (0 bytes)"
    assert excluded[str(broken["text"].resolve())] == "not an image file"
    assert "unreadable image" in excluded[str(broken["truncated"].resolve())]
    assert not any(".DS_Store" in path for path in excluded)
    modes = dict(zip(dataset.manifest["path"], dataset.manifest["mode"]))
    assert {modes[str(p.resolve())] for p in odd.values()} == {"I;16", "RGBA", "P", "LA"}
    assert modes[str(cmyk.resolve())] == "CMYK"
    assert dataset.info["images"] == {"found": 28, "usable": 25, "excluded": 3}


def test_duplicate_across_splits_removed_from_train_as_leakage(tmp_path):
    src = make_kermany(
        tmp_path / "src", {"train": {"NORMAL": 10, "PNEUMONIA": 10}, "test": {"NORMAL": 4, "PNEUMONIA": 4}}
    )
    test_file = sorted((src / "test" / "NORMAL").iterdir())[0]
    leaked = src / "train" / "NORMAL" / "IM-7777-0001.jpeg"
    shutil.copy(test_file, leaked)
    original = sorted((src / "train" / "PNEUMONIA").iterdir())[0]
    twin = src / "train" / "PNEUMONIA" / "person9999_virus_1.jpeg"
    shutil.copy(original, twin)
    dataset = prepare(src, tmp_path / "out", min_val_per_class=1)
    paths = set(dataset.manifest["path"])
    assert str(test_file.resolve()) in paths and str(leaked.resolve()) not in paths
    assert dataset.info["leakage_removed"] == [
        {
            "path": str(leaked.resolve()),
            "split": "train",
            "duplicate_of": str(test_file.resolve()),
            "duplicate_split": "test",
        }
    ]
    assert str(original.resolve()) in paths and str(twin.resolve()) not in paths  # same split: first copy kept
    reasons = [item["reason"] for item in dataset.info["excluded"]]
    assert sum("exact duplicate" in r for r in reasons) == 2


def test_flat_folder_gets_made_splits(tmp_path):
    src = tmp_path / "flat"
    for label_index, label in enumerate(["benign", "malignant", "other"]):
        for i in range(30):
            write_image(src / label / f"{label}_{i}.png", 100 * label_index + i, label=label_index)
    dataset = prepare(src, tmp_path / "out", seed=3, min_val_per_class=3)
    assert dataset.task == "multiclass"
    assert set(dataset.info["splits"]["origin"].values()) == {"made"}
    counts = dataset.info["counts"]
    for label in ["benign", "malignant", "other"]:
        assert counts["test"][label] in range(6, 10)
        assert sum(counts[s][label] for s in counts) == 30


def test_ham10000_splits_are_disjoint_by_lesion(ham, tmp_path):
    dataset = prepare(ham, tmp_path / "out")
    assert dataset.task == "multiclass" and len(dataset.classes) == 7
    groups = split_groups(dataset.manifest)
    assert not groups["train"] & groups["val"] and not groups["train"] & groups["test"]
    assert not groups["val"] & groups["test"]
    assert dataset.manifest["group"].str.startswith("HAM_").all()
    assert {"age", "sex", "localization"} <= set(dataset.manifest.columns)
    assert dataset.info["group_overlap"] == {}


def test_ham10000_missing_image_is_reported(tmp_path, ham):
    src = tmp_path / "ham"
    shutil.copytree(ham, src)
    victim = next(src.rglob("ISIC_0000003.jpg"))
    victim.unlink()
    dataset = prepare(src, tmp_path / "out")
    assert {"path": "ISIC_0000003", "reason": "listed in metadata, image file not found"} in dataset.info["excluded"]


def test_chexpert_uncertain_labels_frontal_only_and_patient_groups(chexpert, tmp_path):
    dataset = prepare(chexpert, tmp_path / "out", frontal_only=True, uncertain="zeros")
    manifest = dataset.manifest
    assert dataset.task == "multilabel" and len(dataset.classes) == 14
    assert dataset.info["uncertain"] == "zeros" and dataset.info["frontal_only"] is True
    assert manifest["path"].str.contains("frontal").all()
    assert set(np.unique(manifest[dataset.classes].to_numpy(dtype=float, na_value=9))) <= {1.0, 0.0, -1.0, 9.0}
    assert (manifest[dataset.classes] == -1).any().any()
    assert manifest["group"].str.match(r"patient\d+").all()
    assert set(manifest.loc[manifest["split"] == "test", "group"]) == {f"patient{50000 + p:05d}" for p in range(6)}
    groups = split_groups(manifest)
    assert not groups["train"] & groups["val"]


def test_chexpert_bad_label_value_is_refused(tmp_path, chexpert):
    src = tmp_path / "cx"
    shutil.copytree(chexpert, src)
    csv = src / "CheXpert-v1.0-small" / "train.csv"
    table = pd.read_csv(csv)
    table["Edema"] = table["Edema"].astype(object)
    table.loc[3, "Edema"] = "maybe"
    table.to_csv(csv, index=False)
    with pytest.raises(LowmedError, match=r"train.csv: row 5, column 'Edema': value 'maybe' is not 1, 0, -1 or empty"):
        prepare(src, tmp_path / "out")


def test_nih_multilabel_by_patient(nih, tmp_path):
    dataset = prepare(nih, tmp_path / "out")
    assert dataset.task == "multilabel" and dataset.classes[0] == "Atelectasis"
    groups = split_groups(dataset.manifest)
    assert not groups["train"] & groups["test"] and not groups["train"] & groups["val"]
    assert set(dataset.manifest[dataset.classes].stack().unique()) <= {0, 1}


def test_nih_official_lists_give_test_split(tmp_path, nih):
    src = tmp_path / "nih"
    shutil.copytree(nih, src)
    names = sorted(p.name for p in (src / "images").iterdir())
    test_names = [n for n in names if n.startswith(("00000001", "00000002"))]
    (src / "test_list.txt").write_text("\n".join(test_names))
    (src / "train_val_list.txt").write_text("\n".join(n for n in names if n not in test_names))
    dataset = prepare(src, tmp_path / "out")
    assert sorted(dataset.split("test")["path"].map(lambda p: p.rsplit("/", 1)[1])) == test_names


def test_csv_format_with_columns_and_escape_check(tmp_path):
    root = tmp_path / "csvdata"
    rows = []
    for i in range(24):
        write_image(root / "img" / f"{i}.png", i, label=i % 2)
        rows.append({"file": f"img/{i}.png", "diagnosis": "yes" if i % 2 else "no", "patient": f"p{i // 2}"})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    columns = CsvColumns(path="file", label="diagnosis", group="patient")
    dataset = prepare(root / "labels.csv", tmp_path / "out", csv_columns=columns, min_val_per_class=2)
    assert dataset.classes == ["no", "yes"] and len(dataset.manifest) == 24
    rows.append({"file": "../outside.png", "diagnosis": "no", "patient": "p99"})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    with pytest.raises(LowmedError, match=r"row 26: path '../outside.png' points outside"):
        prepare(root / "labels.csv", tmp_path / "out2", csv_columns=columns)
    with pytest.raises(LowmedError, match=r"missing column\(s\) 'label'"):
        prepare(root / "labels.csv", tmp_path / "out3", format="csv", csv_columns=CsvColumns(path="file"))


def test_cache_writes_resized_copies(tmp_path):
    src = make_kermany(tmp_path / "src", {"train": {"NORMAL": 8, "PNEUMONIA": 8}}, size=64)
    dataset = prepare(src, tmp_path / "out", cache_size=24, min_val_per_class=1, workers=2)
    for cached in dataset.image_paths():
        assert cached.is_relative_to(tmp_path / "out" / "cache")
        with Image.open(cached) as image:
            assert min(image.size) == 24 and image.mode == "L"
    info = yaml.safe_load((tmp_path / "out" / "dataset.yaml").read_text())
    assert info["cache"] == {"size": 24}


@pytest.mark.parametrize(
    "make_problem, message",
    [
        (lambda src: None, "no such file or folder"),
        (
            lambda src: (src / "train" / "NORMAL").mkdir(parents=True) or (src / "train" / "PNEUMONIA").mkdir(),
            "class folder is empty",
        ),
        (lambda src: src.mkdir() or (src / "notes.txt").write_text("x"), "cannot tell the dataset layout"),
        (
            lambda src: write_broken_files(src / "A") and write_broken_files(src / "B"),
            "none of the 6 files is a usable image",
        ),
    ],
)
def test_bad_sources_are_refused_without_output(tmp_path, make_problem, message):
    src = tmp_path / "src"
    make_problem(src)
    with pytest.raises(LowmedError, match=message):
        prepare(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] in ([], ["src"])


def test_existing_output_needs_overwrite(kermany, tmp_path):
    prepare(kermany, tmp_path / "out")
    with pytest.raises(LowmedError, match="holds a prepared dataset; choose another folder or pass --overwrite"):
        prepare(kermany, tmp_path / "out")
    again = prepare(kermany, tmp_path / "out", seed=5, overwrite=True)
    assert again.info["seed"] == 5


@pytest.mark.parametrize(
    "options, message",
    [
        ({"val_fraction": 0.6, "test_fraction": 0.5}, "together below 1"),
        ({"uncertain": "maybe"}, "--uncertain 'maybe'"),
        ({"format": "dicom"}, "--format 'dicom' is not known"),
        ({"cache_size": 4}, "--cache-size 4"),
    ],
)
def test_bad_options(kermany, tmp_path, options, message):
    with pytest.raises(LowmedError, match=message):
        prepare(kermany, tmp_path / "out", **options)


def test_dataset_yaml_is_a_versioned_contract(kermany, tmp_path):
    """dataset.yaml reads back as the record prepare wrote; one from an earlier lowmed (no schema, no val_rebuilt
    when the val split was kept, a later field unknown here) still reads; one from a newer lowmed is refused."""
    dataset = prepare(kermany, tmp_path / "out")
    path = tmp_path / "out" / "dataset.yaml"
    assert DatasetInfo.read(path) == dataset.info and dataset.info.schema == 1
    assert dataset.info.source_format == "imagefolder" and dataset.info.uncertain_policy == "ignore"
    older = yaml.safe_load(path.read_text())
    del older["schema"], older["splits"]["val_rebuilt"], older["uncertain"]
    older["added_later"] = 1
    path.write_text(yaml.safe_dump(older))
    read = DatasetInfo.read(path)
    assert (read.schema, read.splits.val_rebuilt, read.counts) == (1, None, dataset.info.counts)
    path.write_text(yaml.safe_dump({**older, "schema": 2}))
    with pytest.raises(LowmedError, match=r"dataset.yaml: written by a newer lowmed \(schema 2"):
        DatasetInfo.read(path)
    path.write_text(yaml.safe_dump({**older, "classes": "NORMAL"}))
    with pytest.raises(LowmedError, match="'classes' must be a list of class names"):
        PreparedDataset.load(tmp_path / "out")
    del older["task"]
    path.write_text(yaml.safe_dump(older))
    with pytest.raises(LowmedError, match="dataset.yaml: missing field 'task'"):
        PreparedDataset.load(tmp_path / "out")
