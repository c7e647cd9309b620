"""The models users have, on the data they have (issue 14): architectures from the user's own
code, timm and torchvision, TorchScript and torch.export archives; image folders and .npz files;
each audited through jr-eval and through the API with identical rows; bad inputs exit 2 with
one clear message. Tiny models, a few images, fgsm + deepfool."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

import robustbench_jr
from robustbench_jr.cli.eval import main as jr_eval
from robustbench_jr.cli.train import main as jr_train
from robustbench_jr.data import load_dataset
from robustbench_jr.errors import CheckpointError, InputError
from robustbench_jr.evaluation import ResultStore
from robustbench_jr.models import load_model, sniff

SEARCHES = ["fgsm", "deepfool"]

MODELS_PY = '''
import torch
from torch import nn


def tiny(num_classes=3, width=4):
    """A small CNN on 3×8×8 inputs (it also runs on other sizes: adaptive pooling)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(4 * width, num_classes))


def broken(**kwargs):
    raise ValueError("this factory is broken on purpose")
'''


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder with the user's models.py, weights of its ``tiny`` (safetensors, .pt, TorchScript,
    .pt2), an .npz of 6 RGB 8×8 images and an ImageFolder of 6 PNGs (3 classes, 10×12 pixels)."""
    import importlib.util

    d = tmp_path_factory.mktemp("user")
    (d / "userpkg").mkdir()
    (d / "userpkg" / "__init__.py").write_text("")
    (d / "userpkg" / "nets.py").write_text(MODELS_PY)
    (d / "models.py").write_text(MODELS_PY)
    spec = importlib.util.spec_from_file_location("_t_models", d / "models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net = mod.tiny(3, 4).eval()
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(d / "tiny.safetensors"))
    torch.save({"state_dict": {"module." + k: v for k, v in net.state_dict().items()}}, d / "tiny.pt")
    x = torch.rand(2, 3, 8, 8)
    torch.jit.trace(net, x).save(str(d / "tiny-script.pt"))
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(net, (x,), dynamic_shapes=({0: batch},)), str(d / "tiny.pt2"))
    torch.export.save(torch.export.export(net, (x,)), str(d / "tiny-static.pt2"))  # batch fixed at 2
    g = np.random.default_rng(0)
    np.savez(d / "data.npz", images=(g.random((6, 8, 8, 3)) * 255).astype(np.uint8),
             labels=np.array([0, 1, 2, 0, 1, 2]))
    for c in ("ant", "bee", "cat"):
        (d / "imgs" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray((g.random((10, 12, 3)) * 255).astype(np.uint8)).save(d / "imgs" / c / f"{i}.png")
    return d


def cli(main, args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res


def message(res) -> str:
    return " ".join((res.stderr or res.output).split())


def assert_same_rows(cli_dir: Path, api_dir: Path, cli_name: str, searches=SEARCHES):
    with ResultStore(cli_dir, readonly=True) as a, ResultStore(api_dir, readonly=True) as b:
        for s in searches:
            ra, rb = a.results(cli_name, s), b.results("model", s)
            assert len(ra["sample_id"]) > 0
            for col in ra:
                np.testing.assert_array_equal(ra[col], rb[col], err_msg=f"{s}.{col}")


def audit_both(tmp_path, ckpt, cli_opts: list, load_kw: dict, dataset: str, n: int, name: str, data_kw=None,
               searches=SEARCHES):
    """jr-eval run and load_model + load_dataset + audit on the same samples: identical rows."""
    res = cli(jr_eval, ["run", ckpt, *cli_opts, "--dataset", dataset, "--n", n, "--attacks", ",".join(searches),
                        "--seed", 3, "--batch-size", 4, "--device", "cpu", "--out", tmp_path / "cli", "--quiet"])
    assert res.exit_code == 0, message(res)
    model = load_model(ckpt, **load_kw)
    ds = load_dataset(dataset, "test", **(data_kw or {})).first(n)
    robustbench_jr.audit(model, ds.pixels(), ds.labels, searches=searches, seed=3, sample_ids=ds.ids,
                         dataset=dataset, store=tmp_path / "api", batch_size=4)
    assert_same_rows(tmp_path / "cli", tmp_path / "api", name, searches)
    return model


# ---------------------------------------------------------------------------
# architectures from the user's code
# ---------------------------------------------------------------------------

def test_factory_in_a_python_file_on_an_npz(work, tmp_path):
    arch = f"{work / 'models.py'}:tiny"
    model = audit_both(tmp_path, work / "tiny.safetensors",
                       ["--arch", arch, "--arch-kwargs", "{width: 4}", "--num-classes", 3, "--mean", "0.5",
                        "--std", "0.25"],
                       {"arch": arch, "arch_kwargs": {"width": 4}, "num_classes": 3, "mean": [0.5], "std": [0.25]},
                       f"npz:{work / 'data.npz'}", 6, "tiny")
    assert model.num_classes == 3 and model.input_shape is None or tuple(model.input_shape) == (3, 8, 8)
    with ResultStore(tmp_path / "cli", readonly=True) as st:
        card = st.models()[0].get("card") or {}
    assert model.card["architecture"] == f"{(work / 'models.py').resolve()}:tiny"
    assert model.card["normalization"] == "custom" and model.card["mean"] == [0.5]
    del card


def test_module_path_state_dict_on_an_image_folder(work, tmp_path, monkeypatch):
    """pkg.module:factory found from the current directory; a .pt state dict with 'module.'
    prefixes; PNGs of 10×12 pixels brought to 8×8 with --image-size."""
    monkeypatch.chdir(work)
    audit_both(tmp_path, work / "tiny.pt", ["--arch", "userpkg.nets:tiny", "--image-size", 8],
               {"arch": "userpkg.nets:tiny"}, f"folder:{work / 'imgs'}", 6, "tiny", data_kw={"image_size": 8})
    ds = load_dataset(f"folder:{work / 'imgs'}", "test", image_size=8)
    assert ds.images.dtype == torch.uint8 and tuple(ds.images.shape) == (6, 3, 8, 8)
    assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2] and "3 classes: ant, bee, cat" in ds.provenance


@pytest.mark.parametrize("kind", ["torchscript", "export", "export-static"])
def test_exported_programs(work, tmp_path, kind):
    f = work / {"torchscript": "tiny-script.pt", "export": "tiny.pt2", "export-static": "tiny-static.pt2"}[kind]
    assert sniff(f) == ("torchscript" if kind == "torchscript" else "export")
    model = audit_both(tmp_path, f, [], {}, f"npz:{work / 'data.npz'}", 6, f.stem)
    assert model.num_classes == 3 and model.card["format"] == kind.split("-")[0]
    # the original network's outputs, at any batch size
    ref = load_model(work / "tiny.safetensors", arch=f"{work / 'models.py'}:tiny", num_classes=3)
    x = torch.rand(5, 3, 8, 8)
    torch.testing.assert_close(model(x), ref(x))


def test_torchscript_detected_by_content_not_name(work, tmp_path):
    f = tmp_path / "model.pth"
    f.write_bytes((work / "tiny-script.pt").read_bytes())
    assert load_model(f, input_size=[3, 8, 8]).num_classes == 3
    with pytest.raises(CheckpointError, match="TorchScript archive.*drop it"):
        load_model(f, arch="lenet")


def test_export_archive_with_a_pickled_weight_is_refused(work, tmp_path):
    src, dst = work / "tiny.pt2", tmp_path / "evil.pt2"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("weights/model_weights_config.json"):
                cfg = json.loads(data)
                next(iter(cfg["config"].values()))["use_pickle"] = True
                data = json.dumps(cfg).encode()
            zout.writestr(item, data)
    with pytest.raises(CheckpointError, match="refused.*pickled Python object"):
        load_model(dst)


# ---------------------------------------------------------------------------
# timm and torchvision
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["timm:resnet18", "torchvision:resnet18"])
def test_library_architecture_with_the_users_state_dict(tmp_path, arch):
    if arch.startswith("timm"):
        timm = pytest.importorskip("timm")
        net = timm.create_model("resnet18", pretrained=False, num_classes=3)
    else:
        import torchvision

        torch.manual_seed(0)
        net = torchvision.models.resnet18(weights=None, num_classes=3)
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    g = np.random.default_rng(1)
    np.savez(tmp_path / "d.npz", images=g.random((2, 3, 32, 32)).astype(np.float32), labels=np.array([1, 2]))
    data = f"npz:{tmp_path / 'd.npz'}"
    model = audit_both(tmp_path, tmp_path / "r18.pth", ["--arch", arch, "--num-classes", 3, "--input-size", "3,32,32"],
                       {"arch": arch, "num_classes": 3, "input_size": [3, 32, 32]}, data, 2, "r18")
    # mean/std from the architecture's pretrained config (ImageNet statistics)
    assert model.normalization == "custom"
    np.testing.assert_allclose(model.mean_std()[0], [0.485, 0.456, 0.406], atol=1e-6)
    # without --num-classes: the mismatch names the fix
    res = cli(jr_eval, ["run", tmp_path / "r18.pth", "--arch", arch, "--dataset", data, "--n", 2,
                        "--attacks", "fgsm", "--out", tmp_path / "x", "--quiet"])
    assert res.exit_code == 2 and "pass --num-classes 3" in message(res)
    # without --input-size: the model's 224×224 against 32×32 images, one message
    res = cli(jr_eval, ["run", tmp_path / "r18.pth", "--arch", arch, "--num-classes", 3, "--dataset", data,
                        "--n", 2, "--attacks", "fgsm", "--out", tmp_path / "y", "--quiet"])
    assert res.exit_code == 2 and "[3, 224, 224]" in message(res) and "--input-size 3,32,32" in message(res)


def test_library_pretrained_weights_local_file_and_offline_message(tmp_path, monkeypatch):
    import torchvision

    from robustbench_jr.models import sources

    monkeypatch.setenv("JR_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(url, timeout=5.0):
        raise OSError("cannot reach the host: offline in this test")

    monkeypatch.setattr(sources, "_reachable", offline)
    res = cli(jr_eval, ["run", "torchvision:resnet18", "--dataset", "imagenet", "--out", tmp_path / "o", "--quiet"])
    msg = message(res)
    assert res.exit_code == 2, msg
    assert "download https://download.pytorch.org/models/resnet18" in msg
    assert str(tmp_path / "weights" / "torchvision" / "resnet18.pth") in msg
    # the file put where the message says is used, offline
    (tmp_path / "weights" / "torchvision").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(),
               tmp_path / "weights" / "torchvision" / "resnet18.pth")
    model = load_model("torchvision:resnet18")
    assert model.num_classes == 1000 and model.input_shape == (3, 224, 224)
    assert "pretrained weights (local file" in model.card["source"]


def test_timm_pretrained_offline_message(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    import huggingface_hub

    from robustbench_jr.models import sources

    monkeypatch.setenv("JR_WEIGHTS_DIR", str(tmp_path / "weights"))

    def no_hub(*args, **kwargs):
        raise OSError("offline in this test")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    monkeypatch.setattr(sources, "_reachable", lambda url, timeout=5.0: None)
    with pytest.raises(CheckpointError, match=r"put the file at .*timm/resnet18\.safetensors"):
        load_model("timm:resnet18")


# ---------------------------------------------------------------------------
# post-processing the user's model and auditing it by directory name
# ---------------------------------------------------------------------------

def test_finetune_a_factory_model_on_an_image_folder_then_audit_by_directory(work, tmp_path):
    arch = f"{work / 'models.py'}:tiny"
    out = tmp_path / "pp"
    res = cli(jr_train, ["finetune", work / "tiny.safetensors", "--arch", arch, "--num-classes", 3,
                         "--mean", "0.5", "--std", "0.5", "--dataset", f"folder:{work / 'imgs'}", "--image-size", 8,
                         "--steps", 2, "--batch-size", 3, "--eval-every", 0, "--log-every", 1, "--device", "cpu",
                         "--out", out, "--quiet"])
    assert res.exit_code == 0, message(res)
    card = yaml.safe_load((out / "card.yaml").read_text())
    assert card["architecture"] == f"{(work / 'models.py').resolve()}:tiny"
    assert card["parent"]["checkpoint"] == str((work / "tiny.safetensors").resolve())
    assert card["dataset"] == f"folder:{(work / 'imgs').resolve()}" and card["mean"] == [0.5]
    assert card["load"]["cli"] == f"jr-eval run {out.resolve()}"
    res = cli(jr_eval, ["run", out, "--n", 6, "--attacks", "fgsm", "--out", tmp_path / "a", "--quiet", "--json"])
    assert res.exit_code == 0, message(res)
    doc = json.loads(res.stdout)
    assert doc["models"][0]["name"] == "pp" and doc["models"][0]["searches"]["fgsm"]["n"] == 6
    # the same through the API: finetune → load_model by directory
    card2 = robustbench_jr.finetune(work / "tiny.safetensors", tmp_path / "pp2",
                                    {"dataset": f"folder:{work / 'imgs'}", "image_size": 8, "mean": [0.5],
                                     "std": [0.5], "steps": 2, "batch_size": 3, "eval_every": 0, "log_every": 1,
                                     "device": "cpu"}, arch=arch, num_classes=3)
    assert card2["metrics"]["test_accuracy"] == card["metrics"]["test_accuracy"]
    m1, m2 = load_model(out), load_model(tmp_path / "pp2")
    x = torch.rand(4, 3, 8, 8)
    torch.testing.assert_close(m1(x), m2(x))


def test_finetune_refuses_an_exported_program(work, tmp_path):
    res = cli(jr_train, ["finetune", work / "tiny.pt2", "--dataset", f"npz:{work / 'data.npz'}", "--steps", 1,
                         "--out", tmp_path / "x", "--quiet"])
    assert res.exit_code == 2 and "cannot be fine-tuned" in message(res)


def test_cells_takes_the_model_options(work, tmp_path):
    res = cli(jr_eval, ["cells", work / "tiny.safetensors", "--arch", f"{work / 'models.py'}:tiny",
                        "--num-classes", 3, "--dataset", f"folder:{work / 'imgs'}", "--image-size", 8,
                        "--index", 1, "--resolution", 11, "--out", tmp_path / "cells", "--device", "cpu"])
    assert res.exit_code == 0, message(res)
    assert (tmp_path / "cells" / "cells-1-random.png").is_file()


# ---------------------------------------------------------------------------
# bad inputs: one clear message, exit 2
# ---------------------------------------------------------------------------

def _npz(path, images, labels):
    np.savez(path, images=images, labels=labels)
    return f"npz:{path}"


@pytest.mark.parametrize("case", ["classes", "folder-classes", "input-size", "pixels", "dtype", "factory",
                                  "no-factory", "labels"])
def test_bad_inputs_exit_2_with_one_message(work, tmp_path, case):
    g = np.random.default_rng(0)
    arch = f"{work / 'models.py'}:tiny"
    ok = (g.random((4, 8, 8, 3)) * 255).astype(np.uint8)
    opts = ["--arch", arch, "--num-classes", 3]
    expect = {
        "classes": "has 3 classes but",
        "folder-classes": "has 3 classes but the image folder",
        "input-size": "takes inputs of shape [3, 8, 8] but",
        "pixels": "pixel values outside [0, 1]",
        "dtype": "dtype int32 are not supported",
        "factory": "raised ValueError: this factory is broken on purpose",
        "no-factory": "has no 'nope'; callables defined there: broken, tiny",
        "labels": "labels must be integer class indices",
    }[case]
    if case == "classes":
        data = _npz(tmp_path / "d.npz", ok, np.array([0, 1, 2, 5]))
    elif case == "folder-classes":
        for c in ("x", "y"):
            (tmp_path / "f" / c).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(ok[i]).save(tmp_path / "f" / c / f"{i}.png")
        data = f"folder:{tmp_path / 'f'}"
    elif case == "input-size":
        data = _npz(tmp_path / "d.npz", (g.random((4, 10, 10, 3)) * 255).astype(np.uint8), np.array([0, 1, 2, 0]))
        opts += ["--input-size", "3,8,8"]
    elif case == "pixels":
        data = _npz(tmp_path / "d.npz", g.random((4, 3, 8, 8)).astype(np.float32) * 1.5, np.array([0, 1, 2, 0]))
    elif case == "dtype":
        data = _npz(tmp_path / "d.npz", ok.astype(np.int32), np.array([0, 1, 2, 0]))
    elif case == "labels":
        data = _npz(tmp_path / "d.npz", ok, np.array([0.5, 1, 2, 0]))
    else:
        data = _npz(tmp_path / "d.npz", ok, np.array([0, 1, 2, 0]))
        opts = ["--arch", f"{work / 'models.py'}:{'broken' if case == 'factory' else 'nope'}"]
    res = cli(jr_eval, ["run", work / "tiny.safetensors", *opts, "--dataset", data, "--n", 4, "--attacks", "fgsm",
                        "--out", tmp_path / "run", "--quiet"])
    msg = message(res)
    assert res.exit_code == 2, msg
    assert expect in msg, msg
    assert msg.count("error:") == 1 and "Traceback" not in msg
    assert not (tmp_path / "run" / "results.sqlite").exists()


# ---------------------------------------------------------------------------
# the data loaders
# ---------------------------------------------------------------------------

def test_array_layouts_and_splits(tmp_path):
    g = np.random.default_rng(0)
    x = g.random((5, 3, 6, 7)).astype(np.float32)
    y = np.arange(5) % 2
    np.savez(tmp_path / "nchw.npz", images=x, labels=y)
    np.savez(tmp_path / "nhwc.npz", images=x.transpose(0, 2, 3, 1), labels=y)
    np.savez(tmp_path / "nhw.npz", images=(x[:, 0] * 255).astype(np.uint8), labels=y)
    np.savez(tmp_path / "keras.npz", x_train=x[:3], y_train=y[:3], x_test=x[3:], y_test=y[3:])
    a = load_dataset(f"npz:{tmp_path / 'nchw.npz'}")
    b = load_dataset(f"npz:{tmp_path / 'nhwc.npz'}")
    torch.testing.assert_close(a.images, b.images)
    assert tuple(a.input_shape) == (3, 6, 7) and a.images.dtype == torch.float32
    assert tuple(load_dataset(f"npz:{tmp_path / 'nhw.npz'}").input_shape) == (1, 6, 7)
    assert len(load_dataset(f"npz:{tmp_path / 'keras.npz'}", "train")) == 3
    assert len(load_dataset(f"npz:{tmp_path / 'keras.npz'}", "test")) == 2
    from safetensors.numpy import save_file

    save_file({"images": (x * 255).astype(np.uint8), "labels": y.astype(np.int64)}, str(tmp_path / "d.safetensors"))
    c = load_dataset(f"safetensors:{tmp_path / 'd.safetensors'}")
    assert c.images.dtype == torch.uint8 and tuple(c.input_shape) == (3, 6, 7)


def test_array_file_errors(tmp_path):
    np.savez(tmp_path / "obj.npz", images=np.array([object()]), labels=np.array([0]))
    with pytest.raises(InputError, match="Python objects"):
        load_dataset(f"npz:{tmp_path / 'obj.npz'}")
    np.savez(tmp_path / "f255.npz", images=np.full((2, 3, 4, 4), 200.0), labels=np.array([0, 1]))
    with pytest.raises(InputError, match="divide by 255"):
        load_dataset(f"npz:{tmp_path / 'f255.npz'}")
    np.savez(tmp_path / "shape.npz", images=np.zeros((2, 5, 4, 4)), labels=np.array([0, 1]))
    with pytest.raises(InputError, match="no channel axis"):
        load_dataset(f"npz:{tmp_path / 'shape.npz'}")
    np.savez(tmp_path / "keys.npz", pixels=np.zeros((2, 3, 4, 4)))
    with pytest.raises(InputError, match="arrays found: pixels"):
        load_dataset(f"npz:{tmp_path / 'keys.npz'}")
    with pytest.raises(Exception, match="does not exist"):
        load_dataset(f"npz:{tmp_path / 'missing.npz'}")


def test_folder_sizes_numeric_classes_and_splits(tmp_path):
    g = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("3", "10"):
            (tmp_path / "f" / split / c).mkdir(parents=True)
            for i, size in enumerate([(9, 9), (12, 16)]):
                Image.fromarray((g.random(size) * 255).astype(np.uint8)).save(tmp_path / "f" / split / c / f"{i}.png")
    with pytest.raises(InputError, match="different sizes.*--image-size"):
        load_dataset(f"folder:{tmp_path / 'f'}")
    ds = load_dataset(f"folder:{tmp_path / 'f'}", "train", resize=10, crop=8)
    assert tuple(ds.images.shape) == (4, 1, 8, 8)  # greyscale stays one channel
    assert ds.labels.tolist() == [3, 3, 10, 10]  # integer folder names are the labels
    assert ds.provenance.split(" (")[0].endswith("/f/train") and "serve the train and test" not in ds.provenance
    assert tuple(load_dataset(f"folder:{tmp_path / 'f'}", image_size=8, channels=3).input_shape) == (3, 8, 8)
