"""Checkpoints: safetensors + card round trip, .pt state dicts, refusals and clear errors."""

import os

import pytest
import torch
import yaml

from robustbench_jr.errors import CheckpointError
from robustbench_jr.models import ARCHITECTURES, load_checkpoint, make_model, read_card, save_checkpoint

REQUIRED_CARD_KEYS = {"architecture", "dataset", "num_classes", "input_shape", "normalization",
                      "package_version", "created"}


def _lenet(seed=0):
    torch.manual_seed(seed)
    return make_model("lenet", 10, "mnist").eval()


def _x(shape=(1, 28, 28), n=4):
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(1))


def test_round_trip_identical_outputs(tmp_path):
    model = _lenet()
    card = {"architecture": "lenet", "dataset": "mnist", "training": {"lr": 0.1, "steps": 10}, "seed": 3,
            "metrics": {"clean_accuracy": 0.5}, "provenance": "unit test", "parent": None}
    out = save_checkpoint(tmp_path / "ckpt", model, card)
    assert (out / "model.safetensors").is_file() and (out / "card.yaml").is_file()
    loaded, loaded_card = load_checkpoint(out)
    assert not loaded.training
    assert torch.equal(model(_x()), loaded(_x()))
    assert loaded_card["training"] == {"lr": 0.1, "steps": 10} and loaded_card["seed"] == 3
    # also via the .safetensors file directly
    again, _ = load_checkpoint(out / "model.safetensors")
    assert torch.equal(again(_x()), model(_x()))


def test_card_has_required_keys(tmp_path):
    save_checkpoint(tmp_path, _lenet(), {"architecture": "lenet", "dataset": "mnist"})
    card = read_card(tmp_path)
    assert REQUIRED_CARD_KEYS <= set(card)
    assert card["num_classes"] == 10 and card["input_shape"] == [1, 28, 28] and card["normalization"] == "mnist"
    assert yaml.safe_load((tmp_path / "card.yaml").read_text()) == card


def test_batchnorm_model_round_trip(tmp_path):
    torch.manual_seed(0)
    model = make_model("resnet18-cifar", 10, "cifar")
    model.train()
    model(torch.rand(2, 3, 32, 32))  # move BN running stats away from their init
    model.eval()
    save_checkpoint(tmp_path, model, {"architecture": "resnet18-cifar", "dataset": "cifar10"})
    loaded, _ = load_checkpoint(tmp_path)
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))


def test_pt_state_dict_with_arch(tmp_path):
    model = _lenet()
    for name, obj in [("plain.pt", model.net.state_dict()),
                      ("wrapped.pth", {"state_dict": {"module." + k: v for k, v in model.net.state_dict().items()}})]:
        torch.save(obj, tmp_path / name)
        loaded, card = load_checkpoint(tmp_path / name, arch="lenet", dataset="mnist")
        assert torch.equal(loaded(_x()), model(_x()))
        assert card["architecture"] == "lenet" and card["normalization"] == "mnist"


def test_bare_pt_needs_arch(tmp_path):
    torch.save(_lenet().net.state_dict(), tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="needs --arch") as exc:
        load_checkpoint(tmp_path / "w.pt")
    assert "lenet" in str(exc.value)


def test_cifar_default_dataset_for_bare_weights(tmp_path):
    torch.manual_seed(0)
    model = make_model("ddnet", 10, "cifar").eval()
    torch.save(model.net.state_dict(), tmp_path / "d.pt")
    loaded, card = load_checkpoint(tmp_path / "d.pt", arch="ddnet")
    assert card["dataset"] == "cifar10" and card["normalization"] == "cifar"
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))


class Payload:
    """Any custom class: unpickling it would import this module and run __setstate__."""

    def __init__(self, marker):
        self.marker = marker

    def __setstate__(self, state):
        open(state["marker"], "w").close()
        self.__dict__.update(state)


class SystemCall:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def test_pt_needing_arbitrary_unpickling_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"conv.weight": torch.zeros(1), "extra": Payload(str(marker))}, path)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path, arch="lenet")
    msg = str(exc.value)
    assert "weights_only" in msg and "refused" in msg and "Payload" in msg
    assert not marker.exists()
    # control: an unrestricted load really would have run the code
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_pt_with_os_system_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "sys.pt"
    torch.save({"w": torch.zeros(1), "x": SystemCall(f"touch {marker}")}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(path, arch="lenet")
    assert not marker.exists()


def test_architecture_mismatch_lists_keys(tmp_path):
    save_checkpoint(tmp_path, _lenet(), {"architecture": "lenet", "dataset": "mnist"})
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(tmp_path, arch="jg-mnist")
    msg = str(exc.value)
    assert "missing keys" in msg and "unexpected keys" in msg
    assert "features.3.weight" in msg  # in jg-mnist, not in lenet
    assert "classifier.7.weight" in msg  # in lenet, not in jg-mnist
    assert "--arch" in msg


def test_shape_mismatch_listed(tmp_path):
    save_checkpoint(tmp_path, _lenet(), {"architecture": "lenet", "dataset": "mnist"})
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_checkpoint(tmp_path, num_classes=5)


@pytest.mark.parametrize("cut", [0, 7, 100, -10])
def test_truncated_safetensors(tmp_path, cut):
    save_checkpoint(tmp_path, _lenet(), {"architecture": "lenet", "dataset": "mnist"})
    w = tmp_path / "model.safetensors"
    raw = w.read_bytes()
    w.write_bytes(raw[:cut] if cut >= 0 else raw[:cut])
    with pytest.raises(CheckpointError, match="truncated or corrupt safetensors"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("content", ["half", "empty", "garbage"])
def test_truncated_or_garbage_pt(tmp_path, legacy, content):
    path = tmp_path / "w.pt"
    torch.save(_lenet().net.state_dict(), path, _use_new_zipfile_serialization=not legacy)
    raw = path.read_bytes()
    path.write_bytes({"half": raw[: len(raw) // 2], "empty": b"", "garbage": b"hello, not a checkpoint"}[content])
    with pytest.raises(CheckpointError, match="truncated or corrupt PyTorch file"):
        load_checkpoint(path, arch="lenet")


def test_unknown_arch_lists_valid(tmp_path):
    torch.save(_lenet().net.state_dict(), tmp_path / "w.pt")
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(tmp_path / "w.pt", arch="alexnet")
    for name in ARCHITECTURES:
        assert name in str(exc.value)


def test_missing_and_unknown_format(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        load_checkpoint(tmp_path / "w.onnx", arch="lenet")
    (tmp_path / "dir").mkdir()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(tmp_path / "dir")


def test_card_errors(tmp_path):
    save_checkpoint(tmp_path, _lenet(), {"architecture": "lenet", "dataset": "mnist"})
    (tmp_path / "card.yaml").write_text("architecture: [unclosed")
    with pytest.raises(CheckpointError, match="not valid YAML"):
        read_card(tmp_path)
    (tmp_path / "card.yaml").unlink()
    with pytest.raises(CheckpointError, match="--arch"):
        load_checkpoint(tmp_path)
    model, _ = load_checkpoint(tmp_path, arch="lenet", dataset="mnist")  # bare safetensors + arch
    assert model.num_classes == 10
