"""Every weight-loading path, with weight files the tests write themselves."""

import os
import pickle
from urllib.error import URLError

import pytest
import torch
import torchvision

from lowmed.errors import LowmedError
from lowmed.models.registry import build_model, get_model_spec, layer_groups
from lowmed.models.weights import load_weights, resolve_weights


def resnet18_backbone():
    return build_model(get_model_spec("resnet18"), classes=2).backbone


def test_state_dict_file_loads_with_key_report(tmp_path):
    source = torchvision.models.resnet18(weights=None)  # torchvision layout, 1000-class fc included
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    backbone = resnet18_backbone()
    report = load_weights(backbone, get_model_spec("resnet18"), str(tmp_path / "r18.pth"))
    assert report.source == "file" and report.matched == report.backbone_tensors == 100
    assert report.missing == [] and sorted(report.unexpected) == ["fc.bias", "fc.weight"]
    assert len(report.sha256) == 64
    assert torch.equal(backbone.conv1.weight, source.conv1.weight)
    assert torch.equal(backbone.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)


def test_wrapped_and_nested_state_dicts_load(tmp_path):
    source = torchvision.models.resnet18(weights=None).state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.items()}}, tmp_path / "ddp.ckpt")
    report = load_weights(resnet18_backbone(), get_model_spec("resnet18"), str(tmp_path / "ddp.ckpt"))
    assert report.matched == report.backbone_tensors


def test_one_channel_stem_is_adapted_explicitly(tmp_path):
    source = torchvision.models.resnet18(weights=None).state_dict()
    grey_stem = source["conv1.weight"].sum(dim=1, keepdim=True)  # a torchxrayvision-style 1-channel stem
    torch.save({**source, "conv1.weight": grey_stem}, tmp_path / "grey.pth")
    backbone = resnet18_backbone()
    report = load_weights(backbone, get_model_spec("resnet18"), str(tmp_path / "grey.pth"))
    assert report.adapted == ["conv1.weight"] and report.missing == []
    grey_image = torch.rand(1, 1, 8, 8)
    three = torch.nn.functional.conv2d(grey_image.repeat(1, 3, 1, 1), backbone.conv1.weight)
    one = torch.nn.functional.conv2d(grey_image, grey_stem)
    assert torch.allclose(three, one, atol=1e-5)  # a grey image copied to RGB gives the 1-channel response


def test_incompatible_architecture_is_refused_unless_allowed(tmp_path):
    simple = build_model(get_model_spec("simplecnn"), classes=2).backbone
    torch.save(simple.state_dict(), tmp_path / "simple.pth")
    with pytest.raises(
        LowmedError, match=r"matched only 0 of 100 backbone tensors of resnet18 .*--allow-partial-weights"
    ):
        load_weights(resnet18_backbone(), get_model_spec("resnet18"), str(tmp_path / "simple.pth"))
    report = load_weights(
        resnet18_backbone(), get_model_spec("resnet18"), str(tmp_path / "simple.pth"), allow_partial=True
    )
    assert report.matched == 0 and len(report.missing) == 100


def test_code_running_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "evil.pt", "wb") as handle:
        pickle.dump({"model": Exploit()}, handle)
    with pytest.raises(LowmedError, match="evil.pt: not a loadable weights file"):
        load_weights(resnet18_backbone(), get_model_spec("resnet18"), str(tmp_path / "evil.pt"))
    assert not marker.exists()


def test_imagenet_from_the_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    url = torchvision.models.get_weight("ResNet18_Weights.IMAGENET1K_V1").url
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    fake = torchvision.models.resnet18(weights=None)
    torch.save(fake.state_dict(), tmp_path / "hub" / "checkpoints" / os.path.basename(url))
    backbone = resnet18_backbone()
    report = load_weights(backbone, get_model_spec("resnet18"), "imagenet")
    assert report.source == "imagenet" and report.missing == [] and report.matched == 100
    assert torch.equal(backbone.conv1.weight, fake.conv1.weight)


def test_imagenet_offline_names_the_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(LowmedError) as error:
        load_weights(resnet18_backbone(), get_model_spec("resnet18"), "imagenet")
    message = str(error.value)
    assert "resnet18-f37072fd.pth is not cached" in message and str(tmp_path / "hub" / "checkpoints") in message
    assert "\n" not in message
    assert not list((tmp_path / "hub" / "checkpoints").iterdir())  # no partial file left


def test_auto_weights_and_unknown_names():
    assert resolve_weights("auto", "simplecnn") == "none" and resolve_weights("auto", "resnet50") == "imagenet"
    with pytest.raises(LowmedError, match="--model 'resnet51' is not known"):
        get_model_spec("resnet51")
    with pytest.raises(LowmedError, match="expected none, imagenet, a weights file or a lowmed run dir"):
        load_weights(resnet18_backbone(), get_model_spec("resnet18"), "/no/such/weights.pth")


@pytest.mark.parametrize(
    "name, features",
    [
        ("resnet18", 512),
        ("vgg19", 512),
        ("densenet121", 1024),
        ("efficientnet_b0", 1280),
        ("simplecnn", 256),
        ("timm:mobilenetv3_small_100", 1024),  # pooled 576, then timm's hidden head layer: 1024
    ],
)
def test_registry_feature_sizes_and_layer_groups(name, features):
    spec = get_model_spec(name)
    model = build_model(spec, classes=3).eval()
    assert spec.feature_dim == features
    assert model.backbone(torch.rand(2, 3, 64, 64)).shape == (2, features)
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 3)
    groups = layer_groups(model.backbone)
    assert all(any(True for _ in g.parameters(recurse=False)) for g in groups) and len(groups) > 5


def test_timm_model_with_weights_file(tmp_path):
    import timm  # the optional extra; lowmed[test] installs it

    source = timm.create_model("efficientnet_lite0", pretrained=False)
    torch.save(source.state_dict(), tmp_path / "lite0.pth")
    spec = get_model_spec("timm:efficientnet_lite0")
    assert spec.feature_dim == 1280 and spec.preprocessing.input_size == 224
    model = build_model(spec, classes=2)
    report = load_weights(model.backbone, spec, str(tmp_path / "lite0.pth"))
    assert report.missing == [] and sorted(report.unexpected) == ["classifier.bias", "classifier.weight"]
