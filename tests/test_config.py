import pytest
import yaml

from lowmed.config import TrainConfig
from lowmed.errors import LowmedError


def test_yaml_round_trip(tmp_path):
    config = TrainConfig(data="prepared/x", model="resnet50", epochs=12, lr=3e-4, amp=True, image_size=128)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config.to_dict()))
    assert TrainConfig.from_yaml(tmp_path / "c.yaml") == config


@pytest.mark.parametrize(
    "text, message",
    [
        ("epochs: 3\nlearning_rate: 0.1\n", "unknown key(s) learning_rate"),
        ("epochs: three\n", "epochs: 'three' is not a valid int"),
        ("freeze_base: 1\n", "freeze_base: 1 is not a valid bool"),
        ("- a\n- b\n", "expected a mapping of names to values"),
        ("epochs: [1\n", "not valid YAML"),
    ],
)
def test_bad_yaml_names_the_field(tmp_path, text, message):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(LowmedError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig.from_yaml(tmp_path / "c.yaml")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("epochs", -1, "--epochs -1: expected at least 1"),
        ("augment_strength", 2.0, "--augment-strength 2.0: expected between 0 and 1"),
        ("monitor", "val_f1", "--monitor 'val_f1': expected one of val_loss, val_auroc, val_accuracy"),
        ("batch_size", 1, "--batch-size 1: expected at least 2"),
    ],
)
def test_validation_names_the_option(field, value, message):
    with pytest.raises(LowmedError, match=message):
        TrainConfig(data="x", **{field: value}).validate()


def test_ints_are_accepted_for_floats():
    assert TrainConfig.from_dict({"lr": 1}).lr == 1.0
