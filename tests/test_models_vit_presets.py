"""The ViT study's hyperparameter presets (checked against the table as published) and init_vit."""

from __future__ import annotations

import pytest
import torch

import medxai.models as M
from medxai.errors import CheckpointError, ConfigError
from medxai.models.vit_presets import INITS, init_vit, vit_preset, vit_preset_names, vit_study_row
from medxai.train.config import train_config

# the study repository's "Hyperparameter Settings" table, verbatim (dataset on its first row only)
TABLE = """\
CP-Child Random Adam 0.00001 0.9 0.0001 CosineAnnealing 20 18 64
Sup Adam 0.00001 0.9 0.0001 CosineAnnealing 20 5 64
DINO Adam 0.00001 0.9 0.0001 CosineAnnealing 20 12 64
MAE Adam 0.00001 0.9 0.0001 CosineAnnealing 20 11 64
DUKE Random SGD 0.1 0.3 0 CosineAnnealing 200 79 64
Sup SGD 0.03 0.1 0 CosineAnnealing 20 2 64
DINO SGD 0.005 0.1 0 CosineAnnealing 15 5 64
MAE SGD 0.03 0.1 0 CosineAnnealing 15 2 64
Kvasir Random SGD 0.08 0.1 0 CosineAnnealing 25 24 32
Sup SGD 0.0018 0.1 0 CosineAnnealing 25 8 32
DINO SGD 0.0012 0.1 0.0001 CosineAnnealing 25 20 32
MAE SGD 0.02 0.1 0.0001 CosineAnnealing 25 25 32
MURA Random SGD 0.001 0.9 0.0001 CosineAnnealing 200 180 64
Sup SGD 0.001 0.9 0.0001 CosineAnnealing 100 9 64
DINO SGD 0.001 0.9 0.0001 CosineAnnealing 150 43 64
MAE SGD 0.001 0.9 0.0001 CosineAnnealing 100 35 64
"""


def _rows():
    rows, dataset = [], None
    for line in TABLE.splitlines():
        parts = line.split()
        if len(parts) == 10:
            dataset, parts = parts[0], parts[1:]
        rows.append((dataset, *parts))
    return rows


@pytest.mark.parametrize("row", _rows(), ids=lambda r: f"{r[0]}-{r[1]}")
def test_presets_reproduce_the_published_table(row):
    dataset, init, opt, lr, mom, wd, sched, total, saved, bs = row
    cfg = vit_preset(dataset, init)
    assert cfg["optimizer"] == opt.lower() and cfg["lr"] == float(lr) and cfg["weight_decay"] == float(wd)
    assert cfg["epochs"] == int(total) and cfg["batch_size"] == int(bs) and sched == "CosineAnnealing"
    assert cfg["scheduler"] == "cosine" and cfg["warmup_epochs"] == 0 and cfg["min_lr"] == 0
    assert cfg["monitor"] == "val_loss" and cfg["restore_best"] is True
    if opt == "Adam":
        assert cfg["betas"] == (float(mom), 0.999) and "momentum" not in cfg
    else:
        assert cfg["momentum"] == float(mom) and cfg["nesterov"] is False
    tc = train_config(cfg)  # valid TrainConfig keys and values
    assert tc.optimizer == opt.lower() and tc.lr == float(lr) and tc.epochs == int(total)
    assert vit_study_row(dataset, init)["saved_epoch"] == int(saved)


def test_names_aliases_and_refusals():
    names = vit_preset_names()
    assert len(names) == 16 and names[0] == "cp-child/random" and names[-1] == "mura/mae"
    assert vit_preset("CP_Child", "supervised") == vit_preset("cp-child", "Sup") == vit_preset("CPCHILD", "imagenet")
    a = vit_preset("duke", "random")
    a["lr"] = 5.0
    assert vit_preset("duke", "random")["lr"] == 0.1  # a fresh dict every call
    with pytest.raises(ConfigError, match="known: cp-child, duke, kvasir, mura"):
        vit_preset("chexpert", "random")
    with pytest.raises(ConfigError, match="known: random, supervised, dino, mae"):
        vit_preset("duke", "mocov3")


def _small(num_classes=3):
    torch.manual_seed(0)
    return M.create("vit-ti4", num_classes, 3, img_size=32, depth=2, embed_dim=32, num_heads=2)


def _checkpoint(model, *, head: int | None, grid: int = 8):
    """Random tensors with the model's (= timm's) names; a head of ``head`` classes or none;
    position embeddings on a ``grid`` x ``grid`` patch grid."""
    g = torch.Generator().manual_seed(1)
    sd = {k: torch.randn(v.shape, generator=g) for k, v in model.state_dict().items() if not k.startswith("head.")}
    sd["pos_embed"] = torch.randn(1, 1 + grid * grid, model.embed_dim, generator=g)
    if head:
        sd["head.weight"] = torch.randn(head, model.embed_dim, generator=g)
        sd["head.bias"] = torch.randn(head, generator=g)
    return sd


@pytest.mark.parametrize("init", ["supervised", "dino", "mae"])
def test_init_vit_loads_each_layout(tmp_path, init):
    model = _small()
    head_before = model.head.weight.detach().clone()
    if init == "supervised":  # timm: with a 1000-class head (dropped) and a 14x14 grid (resampled)
        sd = _checkpoint(model, head=1000, grid=14)
        obj = sd
    elif init == "dino":  # DINO: no head
        sd = _checkpoint(model, head=None)
        obj = sd
    else:  # MAE pre-training: under "model", no head
        sd = _checkpoint(model, head=None)
        obj = {"model": sd}
    path = tmp_path / f"{init}.pth"
    torch.save(obj, path)
    report = init_vit(model, init, path)
    assert model.medxai_init == {"init": init, "weights": str(path)}
    torch.testing.assert_close(model.blocks[1].attn.qkv.weight, sd["blocks.1.attn.qkv.weight"], rtol=0, atol=0)
    torch.testing.assert_close(model.patch_embed.proj.weight, sd["patch_embed.proj.weight"], rtol=0, atol=0)
    torch.testing.assert_close(model.head.weight, head_before, rtol=0, atol=0)  # head stays random
    assert "head.weight" in report.missing
    if init == "supervised":
        assert report.dropped_head == ["head.bias", "head.weight"]
        assert any(a.startswith("pos_embed") for a in report.adapted)
    out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 3) and bool(torch.isfinite(out).all())


def test_init_vit_random_and_refusals(tmp_path):
    model = _small()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert init_vit(model, "random") is None and model.medxai_init["init"] == "random"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match="takes no weights"):
        init_vit(model, "random", tmp_path / "x.pth")
    for init in INITS[1:]:
        with pytest.raises(ConfigError, match="needs weights"):
            init_vit(model, init)
    with pytest.raises(ConfigError, match="unknown ViT initialisation"):
        init_vit(model, "clip", tmp_path / "x.pth")
    partial = _checkpoint(model, head=None)
    del partial["blocks.1.mlp.fc2.weight"]
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError):
        init_vit(model, "dino", tmp_path / "partial.pth")
