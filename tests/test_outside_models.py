"""Auditing models medxai did not train: model cards, the five file formats, ``medxai audit --model``,
``medxai.audit()`` and the other commands' ``--model``.

One small CNN is trained for a few steps on a synthetic folder dataset and saved as TorchScript,
a torch.export program and ONNX; a zoo architecture is saved as a safetensors state dict. Auditing
the files through their cards must give the numbers of auditing the original modules in Python.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

import medxai
from medxai.cards import load_card, read_card
from medxai.cli import _load_commands
from medxai.cli._app import app
from medxai.data import open_dataset, write_synthetic
from medxai.errors import ModelError

SIZE = 16
CLASSES = ["NORMAL", "PNEUMONIA"]
SMALL = {
    "attack": {"n": 12, "eps": [0, "2/255", "8/255"], "steps": 3},
    "corruption": {"enabled": False},
    "explain": {"methods": ["saliency", "gradcam"], "n_show": 2, "n_score": 8},
    "score": {"metrics": ["energy_pointing_game"], "sanity": False, "n_boot": 20},
    "evaluation": {"n_boot": 20},
}


def _invoke(args: list[str]) -> None:
    _load_commands()
    app(args=["--quiet", *args], standalone_mode=False)


def _cnn(channels: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(channels, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(6, 2))


def _fit(model: nn.Module, ds) -> nn.Module:
    """Full-batch steps on the audited images themselves, so that accuracy and attack success are not
    trivial (the comparisons need numbers away from chance, not a model that generalises)."""
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    y = torch.tensor([int(ds[i]["label"]) for i in range(len(ds))])
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    model.train()
    for _ in range(80):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def _card(path, **kw) -> dict:
    return {"task": "binary", "classes": CLASSES, "input": {"size": [SIZE, SIZE], "channels": 1}, **kw,
            "path": str(path.name)}


def _write(path, data) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The data, the two original modules and their five files with cards."""
    from medxai.models import create

    root = tmp_path_factory.mktemp("outside")
    write_synthetic("cxr-pneumonia", root / "data", {"train": 24, "test": 16}, size=SIZE, seed=1)
    train = open_dataset(root / "data", split="test")
    torch.manual_seed(0)
    cnn = _fit(_cnn(), train)
    torch.manual_seed(1)
    zoo = _fit(create("small-cnn", 2, in_chans=1), train)  # normalises inside (ImageNet grey mean/std)
    x = torch.rand(2, 1, SIZE, SIZE)
    d = root / "models"
    d.mkdir()
    torch.jit.trace(cnn, x).save(str(d / "cnn.ts"))
    torch.export.save(torch.export.export(cnn, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},)),
                      str(d / "cnn.pt2"))
    torch.onnx.export(cnn, (x,), str(d / "cnn.onnx"), dynamo=False, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17)
    save_file({k: v.contiguous() for k, v in zoo.state_dict().items()}, str(d / "zoo.safetensors"))
    cards = {
        "ts": _write(d / "ts.yaml", _card(d / "cnn.ts", format="torchscript")),
        "pt2": _write(d / "pt2.yaml", _card(d / "cnn.pt2", format="exported")),
        "onnx": _write(d / "onnx.yaml", _card(d / "cnn.onnx", format="onnx")),
        # the zoo model normalises inside; its state dict does not hold the normalisation: the card says it
        "sd": _write(d / "sd.yaml", _card(d / "zoo.safetensors", format="state_dict", arch="small-cnn",
                                         input={"size": [SIZE, SIZE], "channels": 1, "normalize": "imagenet"})),
    }
    return {"root": root, "data": str(root / "data"), "cnn": cnn, "zoo": zoo, "cards": cards}


def _maps(out, model: str, method: str) -> torch.Tensor:
    (path,) = (out / "stages" / "explain" / model / method).glob("*/maps.safetensors")
    return load_file(str(path))["maps"]


@pytest.fixture(scope="module")
def audits(world):
    """The originals audited in Python, and the four files audited by ``medxai audit --model``."""
    ref = medxai.audit({"cnn": world["cnn"], "zoo": world["zoo"]}, world["data"], out=world["root"] / "ref", **SMALL)
    cfg = _write(world["root"] / "small.yaml", SMALL)
    out = world["root"] / "cli"
    models = [arg for c in world["cards"].values() for arg in ("--model", c)]
    _invoke(["audit", *models, "--data", world["data"], "--config", cfg, "--out", str(out)])
    return ref, json.loads((out / "report.json").read_text()), world["root"] / "ref", out


@pytest.mark.parametrize("name,original", [("ts", "cnn"), ("pt2", "cnn"), ("onnx", "cnn"), ("sd", "zoo")])
def test_audit_of_each_format_equals_the_original_module(audits, name, original):
    ref, rep, ref_dir, out = audits
    got, want = rep["models"][name]["metrics"], ref.report["models"][original]["metrics"]
    assert want["balanced_accuracy"]["value"] > 0.6  # the module learnt something: the comparison has teeth
    for metric in ("balanced_accuracy", "auc", "accuracy"):
        assert got[metric]["value"] == pytest.approx(want[metric]["value"], abs=1e-9)
    sr = rep["robustness"]["attack"]["models"][name]["success_rate"]
    sr_ref = ref.report["robustness"]["attack"]["models"][original]["success_rate"]
    assert sr == pytest.approx(sr_ref, abs=1e-9) and max(sr_ref) > 0
    torch.testing.assert_close(_maps(out, name, "saliency"), _maps(ref_dir, original, "saliency"), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["pt2", "onnx", "sd"])
def test_gradcam_of_hookable_formats_equals_the_original(audits, name):
    _, _, ref_dir, out = audits
    original = "zoo" if name == "sd" else "cnn"
    torch.testing.assert_close(_maps(out, name, "gradcam"), _maps(ref_dir, original, "gradcam"), atol=1e-5, rtol=1e-4)


def test_torchscript_gradcam_is_listed_unavailable_with_the_reason(audits):
    _, rep, _, out = audits
    (row,) = [u for u in rep["explanations"]["unavailable"] if u["model"] == "ts"]
    assert row["method"] == "gradcam" and "TorchScript" in row["reason"] and "hooks" in row["reason"]
    assert not (out / "stages" / "explain" / "ts" / "gradcam").exists()
    assert any(f["kind"] == "unavailable" and f["model"] == "ts" for f in rep["findings"])
    html = (out / "report.html").read_text()
    assert "unavailable: ts / gradcam" in html


def test_report_names_formats_files_and_the_positive_class(audits, world):
    _, rep, _, out = audits
    for name, fmt, file in [("ts", "torchscript", "cnn.ts"), ("pt2", "exported", "cnn.pt2"),
                            ("onnx", "onnx", "cnn.onnx"), ("sd", "state_dict", "zoo.safetensors")]:
        card = rep["models"][name]["card"]
        assert card["format"] == fmt and card["file"].endswith(file) and card["positive_class"] == "PNEUMONIA"
        assert len(card["sha256"]) == 64
    assert rep["models"]["onnx"]["card"]["onnx_max_abs_diff"] < 1e-4
    assert rep["data"]["positive_class"] == "PNEUMONIA"
    html = (out / "report.html").read_text()
    assert "positive class: <b>PNEUMONIA</b>" in html and "torchscript file" in html and "cnn.onnx" in html
    assert not (out / "stages" / "train").exists()  # nothing was trained


def test_audit_rerun_reuses_every_stage(audits, world):
    _, _, _, out = audits
    cfg = str(world["root"] / "small.yaml")
    before = len((out / "stage_log.jsonl").read_text().splitlines())
    _invoke(["audit", "--model", world["cards"]["onnx"], "--data", world["data"], "--config", cfg, "--out", str(out)])
    rows = [json.loads(r) for r in (out / "stage_log.jsonl").read_text().splitlines()[before:]]
    assert rows and all(r["cached"] for r in rows)


def test_probability_outputs_give_the_logit_twins_attacks_and_maps(world):
    """A softmax-ended model (card: probabilities) attacks like its logit twin; its IG maps are the twin's
    IG of log-softmax (logits are known up to a per-image constant), and of softmax equal the twin's."""
    from medxai.attacks import PGD
    from medxai.explain import explain

    cnn = world["cnn"]
    d = world["root"] / "models"
    probs = nn.Sequential(cnn, nn.Softmax(dim=1)).eval()
    x = torch.rand(2, 1, SIZE, SIZE)
    torch.jit.trace(probs, x).save(str(d / "probs.ts"))
    model, info = load_card(_write(d / "probs.yaml", _card(d / "probs.ts", format="torchscript",
                                                          output="probabilities")))
    assert "log p" in info.meta["conversions"][0]
    ds = open_dataset(world["data"], split="test")
    xs = torch.stack([ds[i]["image"] for i in range(8)])
    ys = torch.tensor([int(ds[i]["label"]) for i in range(8)])
    adv = PGD(model, eps=8 / 255, steps=5, seed=3)(xs, ys)
    adv_twin = PGD(cnn, eps=8 / 255, steps=5, seed=3)(xs, ys)
    torch.testing.assert_close(adv, adv_twin, atol=1e-4, rtol=0)
    t = torch.ones(8, dtype=torch.long)
    log_twin = nn.Sequential(cnn, nn.LogSoftmax(dim=1)).eval()
    torch.testing.assert_close(explain(model, xs, "ig", t), explain(log_twin, xs, "ig", t), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(explain(model, xs, "ig", t, output="softmax"),
                               explain(cnn, xs, "ig", t, output="softmax"), atol=1e-4, rtol=1e-4)


def test_one_sigmoid_output_becomes_two_logits_exactly(world):
    """Binary with one output: probabilities p -> logits [0, logit(p)], the same as a [0, z] twin."""
    from medxai.attacks import PGD
    from medxai.explain import explain

    torch.manual_seed(2)
    body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 1)).eval()
    d = world["root"] / "models"
    x = torch.rand(4, 1, SIZE, SIZE)
    torch.jit.trace(nn.Sequential(body, nn.Sigmoid()).eval(), x).save(str(d / "sig.ts"))
    model, info = load_card(_write(d / "sig.yaml", _card(d / "sig.ts", format="torchscript", output="probabilities")))

    class Twin(nn.Module):
        def forward(self, v):
            z = body(v)
            return torch.cat([torch.zeros_like(z), z], 1)

    twin = Twin().eval()
    torch.testing.assert_close(model(x), twin(x), atol=1e-5, rtol=1e-5)
    y = torch.tensor([0, 1, 1, 0])
    adv, adv_twin = PGD(model, eps=4 / 255, steps=4, seed=0)(x, y), PGD(twin, eps=4 / 255, steps=4, seed=0)(x, y)
    torch.testing.assert_close(adv, adv_twin, atol=1e-4, rtol=0)
    torch.testing.assert_close(explain(model, x, "ig", 1), explain(twin, x, "ig", 1), atol=1e-4, rtol=1e-4)
    assert any("[0, z]" in c for c in info.meta["conversions"])


def test_imagenet_normalisation_declared_in_the_card_is_applied(world):
    torch.manual_seed(4)
    net = _cnn(3).eval()
    d = world["root"] / "models"
    torch.jit.trace(net, torch.rand(2, 3, SIZE, SIZE)).save(str(d / "rgb.ts"))
    card = _card(d / "rgb.ts", format="torchscript", input={"size": [SIZE, SIZE], "channels": 3,
                                                           "normalize": "imagenet"})
    model, _ = load_card(_write(d / "rgb.yaml", card))
    x = torch.rand(5, 3, SIZE, SIZE)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    want = net((x - mean) / std)
    torch.testing.assert_close(model(x), want, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(net(x), want, atol=1e-3)  # the normalisation matters for this model
    card["input"]["normalize"] = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    model, _ = load_card(_write(d / "rgb2.yaml", card))
    torch.testing.assert_close(model(x), net((x - 0.5) / 0.25), atol=1e-6, rtol=1e-6)


def test_positive_class_reorders_outputs_by_name(world):
    card = _card(world["root"] / "models" / "cnn.pt2", format="exported", classes=["PNEUMONIA", "NORMAL"],
                 positive_class="PNEUMONIA")
    model, info = load_card(_write(world["root"] / "models" / "swapped.yaml", card))
    x = torch.rand(3, 1, SIZE, SIZE)
    # the network's output 0 is called PNEUMONIA here: medxai puts it second, as the positive class
    torch.testing.assert_close(model(x), world["cnn"](x)[:, [1, 0]])
    assert info.class_names == ["NORMAL", "PNEUMONIA"] and info.meta["conversions"]


def test_data_with_other_class_names_is_refused_before_any_model_runs(world, tmp_path):
    import shutil

    data = tmp_path / "renamed"
    shutil.copytree(world["data"], data)
    (data / "medxai.json").unlink()
    for split in ("train", "test"):
        (data / split / "NORMAL").rename(data / split / "healthy")
        (data / split / "PNEUMONIA").rename(data / split / "sick")
    out = tmp_path / "out"
    with pytest.raises(ModelError, match=r"\['NORMAL', 'PNEUMONIA'\].*\['healthy', 'sick'\]"):
        _invoke(["audit", "--model", world["cards"]["onnx"], "--data", str(data), "--out", str(out)])
    assert not out.exists()


def test_missing_split_names_the_splits_present(world, tmp_path):
    with pytest.raises(Exception, match=r"split 'val' has no images.*\['test', 'train'\]"):
        _invoke(["audit", "--model", world["cards"]["onnx"], "--data", world["data"], "--split", "val",
                 "--out", str(tmp_path / "o")])


def test_user_code_is_imported_only_when_the_card_trusts_it(world, tmp_path):
    marker = tmp_path / "imported.txt"
    (tmp_path / "evilmod.py").write_text(
        "import pathlib, torch\n"
        f"pathlib.Path({str(marker)!r}).write_text('ran')\n"
        "def build():\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 2))\n")
    net = nn.Sequential(nn.Flatten(), nn.Linear(256, 2))
    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    card = _card(tmp_path / "w.safetensors", format="state_dict", arch="evilmod:build")
    with pytest.raises(ModelError, match="trust_code"):
        load_card(_write(tmp_path / "card.yaml", card))
    assert not marker.exists()
    model, _ = load_card(_write(tmp_path / "trusted.yaml", {**card, "trust_code": True}))
    assert marker.read_text() == "ran"
    x = torch.rand(2, 1, SIZE, SIZE)
    torch.testing.assert_close(model(x), net(x))


@pytest.mark.parametrize("change,match", [
    ({"colour": "red"}, "colour"),
    ({"positive_class": "LESION"}, "positive_class"),
    ({"format": "keras"}, "format"),
    ({"arch": "resnet18"}, "arch is only for format state_dict"),
    ({"input": {"size": [SIZE, SIZE], "channels": 1, "scale": 2}}, "input.scale"),
])
def test_bad_cards_are_refused_naming_the_key(world, change, match):
    card = {**_card(world["root"] / "models" / "cnn.onnx", format="onnx"), **change}
    with pytest.raises(ModelError, match=match):
        read_card(_write(world["root"] / "models" / "bad.yaml", card))


def test_card_output_count_and_probabilities_are_checked(world):
    d = world["root"] / "models"
    with pytest.raises(ModelError, match="2 outputs per image but the card lists 3 classes"):
        load_card(_write(d / "k3.yaml", _card(d / "cnn.onnx", format="onnx", task="multiclass",
                                              classes=["a", "b", "c"])))
    with pytest.raises(ModelError, match="output: probabilities"):
        load_card(_write(d / "p.yaml", _card(d / "cnn.onnx", format="onnx", output="probabilities")))


def test_python_api_on_a_dataset_object_equals_the_spec(world, audits):
    ref, _, _, _ = audits
    ds = open_dataset(world["data"], split="test")
    res = medxai.audit({"cnn": world["cnn"]}, ds, out=world["root"] / "api_ds", **SMALL)
    assert res.report["models"]["cnn"]["metrics"]["auc"]["value"] == pytest.approx(
        ref.report["models"]["cnn"]["metrics"]["auc"]["value"])
    assert res.report["data"]["positive_class"] == "PNEUMONIA"


def test_other_commands_take_model_cards(world, tmp_path, audits):
    ref, _, ref_dir, _ = audits
    _invoke(["evaluate", "--model", world["cards"]["onnx"], "--data", world["data"], "--n-boot", "0",
             "--out", str(tmp_path)])
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert ev["metrics"]["auc"] == pytest.approx(ref.report["models"]["cnn"]["metrics"]["auc"]["value"])
    assert ev["positive_class"] == "PNEUMONIA"
    _invoke(["attack", "--model", world["cards"]["pt2"], "--data", world["data"], "--eps", "2/255,8/255",
             "--steps", "3", "--n", "12", "--out", str(tmp_path)])
    att = json.loads((tmp_path / "attack.json").read_text())["runs"]["pt2"]
    assert att["success_rate"][-1] == pytest.approx(ref.report["robustness"]["attack"]["models"]["cnn"]
                                                    ["success_rate"][-1])
    _invoke(["explain", "--model", world["cards"]["pt2"], "--data", world["data"], "--methods", "saliency",
             "--n", "8", "--out", str(tmp_path / "maps")])
    maps = load_file(str(tmp_path / "maps" / "maps.safetensors"))
    torch.testing.assert_close(maps["pt2/saliency"], _maps(ref_dir, "cnn", "saliency"), atol=1e-5, rtol=0)
    _invoke(["score", "--maps", str(tmp_path / "maps"), "--metrics", "deletion", "--n-boot", "0",
             "--out", str(tmp_path / "scores")])
    summary = json.loads((tmp_path / "scores" / "summary.json").read_text())
    assert "pt2/saliency" not in summary["skipped"]  # the model-based metric found the model through its card
    _invoke(["corrupt", "--model", world["cards"]["ts"], "--data", world["data"], "--names", "gaussian_noise",
             "--severities", "1", "--n", "8", "--out", str(tmp_path / "c")])
    assert json.loads((tmp_path / "c" / "corruption.json").read_text())["runs"]["ts"]["clean"]
    with pytest.raises(ModelError, match="gradcam is unavailable for this model: TorchScript"):
        _invoke(["explain", "--model", world["cards"]["ts"], "--data", world["data"], "--methods", "gradcam",
                 "--n", "2", "--out", str(tmp_path / "m2")])


def test_monai_densenet_state_dict_saved_with_monais_class(tmp_path, world):
    from monai.networks.nets import DenseNet121

    size = 32
    write_synthetic("cxr-pneumonia", tmp_path / "data", {"test": 6}, size=size, seed=2)
    torch.manual_seed(0)
    net = DenseNet121(spatial_dims=2, in_channels=1, out_channels=2).eval()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "densenet.safetensors"))
    card = _write(tmp_path / "densenet.yaml", {"path": "densenet.safetensors", "format": "state_dict",
                                               "arch": "monai:DenseNet121", "task": "binary", "classes": CLASSES,
                                               "input": {"size": [size, size], "channels": 1}})
    opts = {"attack": {"n": 6, "eps": [0, "8/255"], "steps": 2}, "corruption": {"enabled": False},
            "explain": {"methods": ["saliency"], "n_show": 2, "n_score": 4},
            "score": {"metrics": ["energy_pointing_game"], "sanity": False, "n_boot": 10}, "evaluation": {"n_boot": 10}}
    ref = medxai.audit({"net": net}, str(tmp_path / "data"), out=tmp_path / "ref", **opts).report
    _invoke(["audit", "--model", card, "--data", str(tmp_path / "data"), "--config",
             _write(tmp_path / "opts.yaml", opts), "--out", str(tmp_path / "got")])
    got = json.loads((tmp_path / "got" / "report.json").read_text())
    assert got["models"]["densenet"]["metrics"]["auc"]["value"] == pytest.approx(
        ref["models"]["net"]["metrics"]["auc"]["value"], abs=1e-9)
    assert got["robustness"]["attack"]["models"]["densenet"]["success_rate"] == pytest.approx(
        ref["robustness"]["attack"]["models"]["net"]["success_rate"], abs=1e-9)
    torch.testing.assert_close(_maps(tmp_path / "got", "densenet", "saliency"),
                               _maps(tmp_path / "ref", "net", "saliency"), atol=1e-5, rtol=0)


def test_own_model_example_exports_every_format_and_its_config_audits_them(tmp_path):
    """examples/own-model/export.py and examples/own-model.yaml, shrunk: four cards, one audit."""
    import importlib.util
    from pathlib import Path

    from medxai.pipeline.audit import run_audit
    from medxai.pipeline.config import load_config, read_config_dict

    root = Path(__file__).resolve().parents[1] / "examples"
    spec = importlib.util.spec_from_file_location("own_model_export", root / "own-model" / "export.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    paths = mod.main(["--out", str(tmp_path / "out"), "--size", "32", "--n", "30", "--epochs", "2"])
    raw = read_config_dict(root / "own-model.yaml")
    raw["data"]["spec"] = str(tmp_path / "out" / "data")
    raw["models"] = [{"name": m["name"], "card": str(paths[m["name"]])} for m in raw["models"]]
    raw.update(SMALL, score={**SMALL["score"], "compare": raw["score"]["compare"]})
    res = run_audit(load_config(raw), tmp_path / "run")
    metrics = {n: m["metrics"]["auc"]["value"] for n, m in res.report["models"].items()}
    assert set(metrics) == {"torchscript", "exported", "onnx", "densenet"}
    assert metrics["torchscript"] == pytest.approx(metrics["onnx"], abs=1e-6)
    assert metrics["torchscript"] == pytest.approx(metrics["exported"], abs=1e-6)
    unavailable = [(u["model"], u["method"]) for u in res.report["explanations"]["unavailable"]]
    assert unavailable == [("torchscript", "gradcam")]


def test_card_cam_layer_is_the_layer_grad_cam_hooks(world):
    from medxai.explain import GradCAM

    d = world["root"] / "models"
    model, _ = load_card(_write(d / "layer.yaml", _card(d / "cnn.pt2", format="exported", cam_layer="3")))
    assert model.default_cam_layer == "net.3"
    x = torch.rand(3, 1, SIZE, SIZE)
    torch.testing.assert_close(GradCAM(model).attribute(x, target=1), GradCAM(world["cnn"], "3").attribute(x, target=1),
                               atol=1e-5, rtol=1e-4)
    with pytest.raises(ModelError, match="cam_layer 'nope' is not a module"):
        load_card(_write(d / "nolayer.yaml", _card(d / "cnn.pt2", format="exported", cam_layer="nope")))


def test_config_mixes_trained_models_and_cards(world, tmp_path):
    """One config: a model trained by the audit beside an outside model, on the synthetic stand-in."""
    from medxai.pipeline.audit import run_audit
    from medxai.pipeline.config import load_config

    raw = {"name": "mixed", "data": {"synthetic": {"study": "cxr-pneumonia", "size": SIZE, "n_train": 16, "n_val": 8,
                                                   "n_test": 12}},
           "models": [{"name": "trained", "arch": "small-cnn", "train": {"epochs": 1, "batch_size": 8}},
                      {"name": "onnx", "card": world["cards"]["onnx"]}], **SMALL}
    res = run_audit(load_config(raw), tmp_path / "run", synthetic=True)
    assert set(res.report["models"]) == {"trained", "onnx"}
    assert res.report["models"]["trained"]["history"] and "card" not in res.report["models"]["trained"]
    assert res.report["models"]["onnx"]["card"]["format"] == "onnx"
    assert (tmp_path / "run" / "stages" / "train" / "trained").is_dir()
    assert not (tmp_path / "run" / "stages" / "train" / "onnx").exists()


def test_store_explain_and_score_take_model_cards(world, tmp_path, audits):
    """medxai store explain --model: the same saliency maps as the audit; store score finds the model
    through the card recorded in the store (deletion needs it)."""
    from medxai.distributed import MapStore

    _, _, ref_dir, _ = audits
    store = tmp_path / "store"
    _invoke(["store", "explain", "--model", world["cards"]["onnx"], "--data", world["data"], "--methods", "saliency",
             "--n", "8", "--dtype", "float32", "--store", str(store), "--device", "cpu"])
    ms = MapStore.open(store)
    shards = [ms.read(i) for i in range(ms.n_shards)]
    ids = [s for _, meta in shards for s in meta["ids"]]
    maps = torch.cat([t["maps/onnx/saliency"] for t, _ in shards])
    ref = load_file(str(next((ref_dir / "stages" / "explain" / "cnn" / "saliency").glob("*/maps.safetensors"))))
    res = json.loads(next((ref_dir / "stages" / "explain" / "cnn" / "saliency").glob("*/result.json")).read_text())
    want = ref["maps"][[res["ids"].index(i) for i in ids]]
    torch.testing.assert_close(maps, want, atol=1e-5, rtol=0)
    _invoke(["store", "score", "--store", str(store), "--metrics", "deletion", "--n-boot", "0", "--device", "cpu"])
    summary = json.loads((store / "scores" / "summary.json").read_text())
    assert "onnx/saliency" not in summary["skipped"]
