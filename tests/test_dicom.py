"""DICOM input: pixel values as a viewer shows them (hand-computed here), refusals with reasons, and no identifying
tag in any output."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from lowmed import evaluate, prepare, train
from lowmed.config import TrainConfig
from lowmed.data.images import inspect_image, load_image
from tests.conftest import FAST

STORED = np.array([[0, 1000], [2000, 4095]] * 16, dtype=np.uint16).reshape(32, 2).repeat(16, axis=1)  # 32×32


def write_dicom(path, pixels=STORED, bits=12, photometric="MONOCHROME2", preamble=True, **tags):
    """A single-image DICOM file as a scanner writes one, with ``tags`` set."""
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.set_pixel_data(pixels, photometric_interpretation=photometric, bits_stored=bits)
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    for name, value in tags.items():
        setattr(dataset, name, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=preamble)
    return dataset


def _pixels(path):
    return np.asarray(load_image(path), dtype=np.float64)


def test_without_a_window_the_stored_range_is_stretched_and_monochrome1_inverted(tmp_path):
    write_dicom(tmp_path / "a.dcm")
    expected = np.round(STORED / 4095 * 255)
    assert np.array_equal(_pixels(tmp_path / "a.dcm"), expected)
    write_dicom(tmp_path / "b.dcm", photometric="MONOCHROME1")
    assert np.array_equal(_pixels(tmp_path / "b.dcm"), np.round((1 - STORED / 4095) * 255))


def test_rescale_then_window_as_the_standard_defines(tmp_path):
    """Rescale 2·x − 1024, then the LINEAR window C = 1000, W = 2001 (PS3.3 C.11.2.1.2.1)."""
    write_dicom(tmp_path / "w.dcm", RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=1000, WindowWidth=2001)
    values = STORED * 2.0 - 1024
    expected = np.round(np.clip((values - 999.5) / 2000 + 0.5, 0, 1) * 255)
    assert np.array_equal(_pixels(tmp_path / "w.dcm"), expected)
    assert _pixels(tmp_path / "w.dcm")[0, 0] == 0 and _pixels(tmp_path / "w.dcm")[3, 0] == 255


def test_a_voi_lut_wins_over_a_window(tmp_path):
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 8]  # one entry per stored value, 8-bit output
    lut.add_new(0x00283006, "US", [min(255, v // 8) for v in range(4096)])  # LUTData
    write_dicom(tmp_path / "l.dcm", VOILUTSequence=Sequence([lut]), WindowCenter=10, WindowWidth=2)
    expected = np.round(np.minimum(255, STORED // 8) / 255 * 255)
    assert np.array_equal(_pixels(tmp_path / "l.dcm"), expected)


@pytest.mark.parametrize("bits, dtype", [(8, np.uint8), (16, np.uint16)])
def test_8_and_16_bit_files(tmp_path, bits, dtype):
    stored = (STORED / 4095 * (2**bits - 1)).astype(dtype)
    write_dicom(tmp_path / "x.dcm", pixels=stored, bits=bits)
    assert np.array_equal(_pixels(tmp_path / "x.dcm"), np.round(stored / stored.max() * 255))


def test_rle_compressed_reads_as_the_uncompressed_file(tmp_path):
    dataset = write_dicom(tmp_path / "plain.dcm")
    dataset.compress(RLELossless, encoding_plugin="pydicom")
    dataset.save_as(tmp_path / "rle.dcm", enforce_file_format=True)
    assert np.array_equal(_pixels(tmp_path / "rle.dcm"), _pixels(tmp_path / "plain.dcm"))


def test_a_multi_frame_file_is_excluded_with_its_reason(tmp_path):
    write_dicom(tmp_path / "m.dcm", pixels=np.stack([STORED, STORED]))
    found = inspect_image(str(tmp_path / "m.dcm"))
    assert not found["ok"] and "multi-frame DICOM (2 frames)" in found["reason"]


def _without(name, path, **kwargs):
    dataset = write_dicom(path, **kwargs)
    del dataset[name]
    dataset.save_as(path)


def _truncated(path):
    write_dicom(path)
    path.write_bytes(path.read_bytes()[:-500])


def _malformed(path, *tags):
    from pydicom.dataelem import DataElement

    dataset = write_dicom(path)
    for tag in tags:
        dataset.add(DataElement(tag, "LO", "many"))
    dataset.save_as(path)


BROKEN = {
    "no Rows": (
        lambda p: _without("Rows", p),
        "incomplete DICOM header (Missing required element: (0028,0010) 'Rows')",
    ),
    "no PlanarConfiguration": (
        lambda p: _without("PlanarConfiguration", p, pixels=np.zeros((8, 8, 3), np.uint8), bits=8, photometric="RGB"),
        "incomplete DICOM header (Missing required element: (0028,0006) 'Planar Configuration')",
    ),
    "truncated pixels": (_truncated, "damaged or truncated pixel data (The number of bytes of pixel data is less"),
    "a PNG named .dcm": (lambda p: Image.new("L", (8, 8)).save(p, format="PNG"), "not a DICOM file (a PNG image)"),
    "text named .dcm": (lambda p: p.write_text("not an image\n" * 20), "not a DICOM file (no 'DICM' marker"),
    "NumberOfFrames not a number": (
        lambda p: _malformed(p, 0x00280008),
        "malformed DICOM tag NumberOfFrames ('many')",
    ),
    "window not a number": (lambda p: _malformed(p, 0x00281050, 0x00281051), "malformed DICOM display tags"),
    "palette colour": (
        lambda p: write_dicom(p, photometric="PALETTE COLOR"),
        "PALETTE COLOR DICOM; lowmed reads greyscale",
    ),
}


@pytest.mark.parametrize("kind", BROKEN)
def test_a_broken_dicom_file_is_excluded_with_a_true_reason(tmp_path, kind):
    write, reason = BROKEN[kind]
    write(tmp_path / "broken.dcm")
    found = inspect_image(str(tmp_path / "broken.dcm"))
    assert not found["ok"] and found["reason"].startswith(reason), found["reason"]
    assert "install" not in found["reason"]  # only a compressed file is missing a decoder


def test_broken_dicom_files_never_stop_prepare(tmp_path):
    source = _dicom_tree(tmp_path / "raw")
    for index, (write, _) in enumerate(BROKEN.values()):
        write(source / "NORMAL" / f"broken{index}.dcm")
    dataset = prepare(source, tmp_path / "prepared", min_val_per_class=2)
    assert len(dataset.manifest) == 32 and len(dataset.info["excluded"]) == len(BROKEN)


def _dicom_tree(root):
    """Two classes of DICOM files, some without an extension, two images per patient, every identifying tag set."""
    rng = np.random.default_rng(0)
    for label in ("NORMAL", "PNEUMONIA"):
        for index in range(16):
            name = f"scan{index:02d}" + (".dcm" if index % 3 else "")  # every third file has no extension
            write_dicom(
                root / label / name,
                pixels=rng.integers(0, 4096, (32, 32)).astype(np.uint16),
                PatientID=f"MRN{label[0]}{index // 2:03d}",
                PatientName="Doe^Jane",
                PatientBirthDate="19700101",
                AccessionNumber="ACC987654",
                ViewPosition="PA" if index % 4 else "AP",
                BodyPartExamined="CHEST",
            )
    return root


def _written(prepared):
    """Everything prepare wrote as text."""
    return "".join(path.read_text() for path in (prepared / "manifest.csv", prepared / "dataset.yaml"))


def test_dicom_trees_prepare_with_patient_groups_and_no_identifying_tags(tmp_path):
    source = _dicom_tree(tmp_path / "raw")
    dataset = prepare(source, tmp_path / "prepared", min_val_per_class=2)
    manifest = dataset.manifest
    assert len(manifest) == 32 and set(manifest["mode"]) == {"DICOM"}
    assert manifest["group"].str.fullmatch(r"MRN[NP]\d{3}").all() and manifest["group"].nunique() == 16
    assert set(manifest["view_position"]) == {"PA", "AP"} and set(manifest["body_part"]) == {"CHEST"}
    assert "patient_id" not in manifest.columns
    written = _written(tmp_path / "prepared")
    for secret in ("Doe", "Jane", "19700101", "ACC987654"):
        assert secret not in written
    for split in ("train", "val", "test"):  # patients never straddle splits
        others = set(manifest.loc[manifest["split"] != split, "group"])
        assert not set(manifest.loc[manifest["split"] == split, "group"]) & others
    run = tmp_path / "run"
    train(TrainConfig(data=str(dataset.root), epochs=1, out=str(run), **FAST))
    evaluate(run, bootstrap=10)
    for output in [*run.rglob("*.json"), *run.rglob("*.csv"), *run.rglob("*.yaml")]:
        text = output.read_text()
        assert not any(secret in text for secret in ("Doe", "Jane", "19700101", "ACC987654")), output


def test_hashed_groups_keep_the_patients_together_and_no_patient_id(tmp_path):
    source = _dicom_tree(tmp_path / "raw")
    dataset = prepare(source, tmp_path / "prepared", min_val_per_class=2, hash_groups=True)
    groups = dataset.manifest["group"]
    assert groups.str.fullmatch(r"[0-9a-f]{16}").all() and groups.nunique() == 16
    assert "MRN" not in _written(tmp_path / "prepared") and dataset.info["groups_hashed"] is True


def write_undecodable_j2k(path):
    """A JPEG 2000 file whose pixels no installed plugin decodes (a J2K marker and nothing decodable)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    dataset = write_dicom(path)
    dataset.file_meta.TransferSyntaxUID = JPEG2000Lossless
    dataset.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 60])
    dataset["PixelData"].VR = "OB"
    dataset.save_as(path, enforce_file_format=True)


def test_a_compressed_file_without_its_decoder_is_excluded_naming_the_extra(tmp_path):
    write_undecodable_j2k(tmp_path / "j2k.dcm")
    found = inspect_image(str(tmp_path / "j2k.dcm"))
    assert (
        not found["ok"] and "cannot decode the pixels (JPEG 2000 Image Compression (Lossless Only)" in found["reason"]
    )
    assert "pip install pylibjpeg pylibjpeg-openjpeg" in found["reason"]


def test_predict_reads_dicom_inputs(trained_run, tmp_path):
    from lowmed import predict

    write_dicom(tmp_path / "in" / "a.dcm")
    write_dicom(tmp_path / "in" / "noextension", PatientName="Doe^Jane")
    result = predict(trained_run, [tmp_path / "in" / "a.dcm", tmp_path / "in" / "noextension"], out=tmp_path / "p.csv")
    assert result.unreadable == 0 and "Doe" not in (tmp_path / "p.csv").read_text()


def make_rsna(root, patients=24):
    """The RSNA Pneumonia Detection Challenge layout: a row per box (Target 1) or per negative image, detailed
    classes, and one DICOM file per patientId; one listed image is missing."""
    rng = np.random.default_rng(1)
    labels, details = [], []
    for index in range(patients):
        patient = f"{index:04d}abcd-{index:02d}"
        positive = index % 2 == 1
        for _ in range(2 if positive else 1):  # several boxes per positive image
            box = [10, 12, 8, 9] if positive else ["", "", "", ""]
            labels.append([patient, *box, int(positive)])
        details.append([patient, "Lung Opacity" if positive else "Normal"])
        if index != patients - 1:
            pixels = rng.integers(0, 4096, (32, 32)).astype(np.uint16)
            write_dicom(root / "stage_2_train_images" / f"{patient}.dcm", pixels=pixels, PatientID=patient)
    pd.DataFrame(labels, columns=["patientId", "x", "y", "width", "height", "Target"]).to_csv(
        root / "stage_2_train_labels.csv", index=False
    )
    pd.DataFrame(details, columns=["patientId", "class"]).to_csv(root / "stage_2_detailed_class_info.csv", index=False)
    return root


def test_the_rsna_layout_prepares_one_row_per_image_grouped_by_patient(tmp_path):
    source = make_rsna(tmp_path / "rsna")
    source.mkdir(exist_ok=True)
    dataset = prepare(source, tmp_path / "prepared", min_val_per_class=2)
    manifest = dataset.manifest
    assert dataset.info["source"]["format"] == "rsna" and dataset.classes == ["NORMAL", "PNEUMONIA"]
    assert len(manifest) == 23 and manifest["group"].is_unique
    assert (manifest["label"] == "PNEUMONIA").sum() == 11  # the missing image was a positive one
    assert set(manifest["rsna_class"]) == {"Normal", "Lung Opacity"}
    assert (manifest["rsna_class"] == "Lung Opacity").eq(manifest["label"] == "PNEUMONIA").all()
    excluded = dataset.info["excluded"]
    assert len(excluded) == 1 and "image file not found" in excluded[0]["reason"]


def test_frontal_only_keeps_pa_and_ap_views_and_the_cache_holds_png_copies(tmp_path):
    source = _dicom_tree(tmp_path / "raw")
    for label in ("NORMAL", "PNEUMONIA"):  # two lateral views per class
        for index in range(2):
            write_dicom(source / label / f"lateral{index}.dcm", PatientID=f"L{label}{index}", ViewPosition="LL")
    dataset = prepare(source, tmp_path / "prepared", min_val_per_class=2, frontal_only=True, cache_size=16)
    assert len(dataset.manifest) == 32 and set(dataset.manifest["view_position"]) == {"PA", "AP"}
    reasons = [item["reason"] for item in dataset.info["excluded"]]
    assert reasons.count("not a frontal view (ViewPosition LL; --frontal-only)") == 4
    cached = dataset.image_paths(dataset.manifest)
    assert all(path.suffix == ".png" and path.is_file() for path in cached)


def test_without_pydicom_a_dicom_file_names_the_extra_to_install(tmp_path, monkeypatch, capsys):
    import importlib.util

    from tests.test_cli import run_cli

    _dicom_tree(tmp_path / "raw")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pydicom" else real(name, *a))
    code, _, err = run_cli(capsys, "prepare", str(tmp_path / "raw"), "-o", str(tmp_path / "prepared"), "--workers", "1")
    assert code == 2 and "pip install 'lowmed[dicom]'" in err and not (tmp_path / "prepared").exists()


def test_lesion_boxes_on_a_dicom_image_use_its_size(tmp_path):
    from lowmed.data.lesions import LesionBox, lesion_mask

    write_dicom(tmp_path / "wide.dcm", pixels=np.zeros((20, 40), dtype=np.uint16))
    mask = lesion_mask(tmp_path / "wide.dcm", [LesionBox("wide.dcm", 20, 0, 20, 10)], 4)
    assert mask[:2, 2:].all() and mask.sum() == 4


def test_exclusion_reasons_are_shown_as_written_brackets_included(tmp_path, capsys):
    from tests.test_cli import run_cli

    source = _dicom_tree(tmp_path / "raw")
    write_dicom(source / "NORMAL" / "[copy] scan.dcm", photometric="PALETTE COLOR")
    write_undecodable_j2k(source / "NORMAL" / "j2k.dcm")
    code, out, _ = run_cli(capsys, "prepare", str(source), "-o", str(tmp_path / "prepared"), "--workers", "1")
    assert code == 0 and "pip install 'lowmed[dicom]' for all of them" in out
    assert "[copy] scan.dcm: PALETTE COLOR DICOM" in out
