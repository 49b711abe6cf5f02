"""Self-supervised pretraining (MAE, DINO) and supervised pretraining of tiny ViTs, read by init_vit."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import medxai.models as M
from medxai.errors import ConfigError
from medxai.models.vit_presets import init_vit
from medxai.train.pretrain import ImageFiles, patchify, pretrain, random_masking

K = 16  # DINO prototypes in the tests


def _vit(n_out: int = 4, pool: str = "token") -> torch.nn.Module:
    return M.create("vit-ti8", n_out, 1, img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2,
                    global_pool=pool)


def _squares(n: int, seed: int, size: int = 32) -> list[dict]:
    """Noise background, one bright 8 x 8 square; its quadrant is the label (4 classes)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, generator=g) * 0.3
    y = torch.randint(0, 4, (n,), generator=g)
    for i in range(n):
        r0 = int(y[i] // 2) * 16 + int(torch.randint(0, 9, (1,), generator=g))
        c0 = int(y[i] % 2) * 16 + int(torch.randint(0, 9, (1,), generator=g))
        x[i, :, r0:r0 + 8, c0:c0 + 8] = 0.7 + 0.3 * float(torch.rand(1, generator=g))
    return [{"image": x[i], "label": y[i]} for i in range(n)]


@pytest.fixture(scope="module")
def mae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mae")
    torch.manual_seed(0)
    model = _vit()
    images = [{"image": it["image"]} for it in _squares(64, 1)]  # unlabelled
    return pretrain(model, images, "mae", epochs=8, batch_size=16, seed=0, out=out, progress=False), out


def test_mae_masking_is_exact_per_image_and_seeded():
    for length, ratio in ((16, 0.75), (64, 0.75), (49, 0.75)):
        keep, mask, restore = random_masking(32, length, ratio, torch.Generator().manual_seed(0))
        assert (torch.sort(restore, dim=1).values == torch.arange(length)).all()  # a permutation per image
        n_masked = length - int(length * (1 - ratio))
        assert (mask.sum(dim=1) == n_masked).all() and keep.shape == (32, length - n_masked)
        assert (torch.gather(mask, 1, keep) == 0).all()  # the kept patches are the unmasked ones
        assert len({tuple(r.tolist()) for r in mask}) > 1  # each image its own mask
        again = random_masking(32, length, ratio, torch.Generator().manual_seed(0))[1]
        assert torch.equal(mask, again)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    assert torch.equal(patchify(x, 4)[0, 1], x[0, :, 0:4, 4:8].permute(1, 2, 0).reshape(-1))


def test_mae_loss_decreases_and_the_files_are_written(mae_run):
    result, out = mae_run
    # measured (seed 0, 64 images, 8 epochs): 1.369 -> 1.099 (norm_pix_loss targets: ~1 = predicting the mean)
    assert result.losses[-1] < result.losses[0] - 0.15
    rec = json.loads((out / "pretrain.json").read_text())
    assert rec["objective"] == "mae" and len(rec["losses"]) == 8 and rec["settings"]["options"]["mask_ratio"] == 0.75
    assert not any(k.startswith("head.") for k in load_file(out / "pretrained.safetensors"))


def _finetune(model: torch.nn.Module, train: list[dict], test: list[dict], epochs: int, seed: int) -> float:
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    x, y = torch.stack([t["image"] for t in train]), torch.stack([t["label"] for t in train])
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 8):
            idx = perm[i:i + 8]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    xt, yt = torch.stack([t["image"] for t in test]), torch.stack([t["label"] for t in test])
    with torch.no_grad():
        return float((model(xt).argmax(1) == yt).float().mean())


def test_mae_init_fine_tunes_at_least_as_well_as_random_init(mae_run):
    # Measured at this scale (ViT depth 2, width 32, patch 8 at 32 px; MAE on 64 unlabelled images for
    # 8 epochs; fine-tuning on 64 other labelled images, 5 epochs, batch 8, AdamW 1e-3; 128 test images):
    # seeds 0, 1, 2 gave 0.242 for both inits (chance, 4 classes): neither learns the quadrant task in
    # 40 steps. With 12 epochs at lr 3e-3: seed 0 MAE 0.320 vs random 0.367, seed 1 MAE 0.453 vs 0.250.
    # No reliable margin at this scale, so none is asserted: only that MAE init is no worse here and that
    # the loaded weights are the pretrained ones. (A real margin needs more data and steps.)
    _, out = mae_run
    train, test = _squares(64, 2), _squares(128, 3)
    torch.manual_seed(0)
    mae = _vit(pool="avg")  # MAE fine-tunes with global average pooling (fc_norm), as the paper
    report = init_vit(mae, "mae", out / "pretrained.safetensors")
    assert "fc_norm.weight" in report.missing and "blocks.0.attn.qkv.weight" in report.loaded
    torch.manual_seed(0)
    scratch = _vit(pool="avg")
    acc_mae, acc_random = _finetune(mae, train, test, 5, 0), _finetune(scratch, train, test, 5, 0)
    assert acc_mae >= acc_random - 0.02


@pytest.fixture(scope="module")
def dino_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dino")
    torch.manual_seed(0)
    model = _vit(pool="avg")  # CLS-token features of a fresh tiny ViT barely depend on the image; mean-pooled do
    images = [{"image": it["image"]} for it in _squares(64, 4)]
    result = pretrain(model, images, "dino", epochs=8, batch_size=16, seed=0, out=out, progress=False,
                      out_dim=K, n_local=2)
    return result, out, images


def test_dino_loss_decreases_without_collapse(dino_run):
    # Measured (seed 0, 64 images, 8 epochs, K=16, log K = 2.77, 2 global + 2 local crops):
    #   loss            3.023 2.253 2.118 2.166 2.304 2.477 2.640 2.723
    #   teacher entropy 1.708 1.816 1.863 2.003 2.173 2.363 2.503 2.539
    #   teacher spread  0.179 0.176 0.182 0.170 0.165 0.165 0.177 0.193
    # The cross-entropy is H(teacher) + KL(teacher || student): the KL falls (1.32 -> 0.18) while the
    # entropy drifts up (centring outweighs sharpening at this scale), so the loss is not monotone.
    result, _, images = dino_run
    ent = [h["teacher_entropy"] for h in result.history]
    kl = [h["loss"] - h["teacher_entropy"] for h in result.history]
    assert result.losses[-1] < result.losses[0] - 0.15 and min(result.losses) < result.losses[0] - 0.5
    assert kl[-1] < kl[0] - 0.5
    assert min(ent) > 0.5 * math.log(K)  # not collapsed onto one prototype (entropy ~0)
    assert max(ent) < 0.97 * math.log(K)  # nor onto the uniform distribution (log K)
    x = torch.stack([im["image"] for im in images[:32]])
    probs = result.trainer.teacher_probs(x)
    assert float((probs - probs.mean(0)).abs().sum(1).mean()) / 2 > 0.1  # outputs differ across images
    assert len(set(probs.argmax(1).tolist())) >= 4 and min(h["teacher_spread"] for h in result.history) > 0.1


@pytest.fixture(scope="module")
def supervised_run(tmp_path_factory):
    from medxai.data import SyntheticDataset

    out = tmp_path_factory.mktemp("sup")
    torch.manual_seed(0)
    model = _vit(n_out=7)  # any head: supervised pretraining puts its own on the pooled features
    data = SyntheticDataset("cxr-pneumonia", 32, size=32, split="train", seed=5)
    return pretrain(model, data, "supervised", epochs=2, batch_size=16, out=out, progress=False), out


@pytest.mark.parametrize("which", ["mae", "dino", "supervised"])
def test_init_vit_loads_each_written_file_exactly(which, mae_run, dino_run, supervised_run):
    out = {"mae": mae_run[1], "dino": dino_run[1], "supervised": supervised_run[1]}[which]
    path = out / "pretrained.safetensors"
    saved = load_file(path)
    fresh = _vit(n_out=3, pool="avg" if which == "dino" else "token")
    report = init_vit(fresh, which, path)
    state = fresh.state_dict()
    assert report.loaded and not report.unexpected and set(report.missing) <= {"head.weight", "head.bias"}
    assert all(torch.equal(state[k], v) for k, v in saved.items())
    assert fresh.medxai_init == {"init": which, "weights": str(path)}


def test_supervised_pretraining_records_accuracy(supervised_run):
    result, _ = supervised_run
    assert result.settings["options"]["num_classes"] == 2 and "accuracy" in result.history[0]
    with pytest.raises(ConfigError, match="needs labelled data"):
        pretrain(_vit(), [{"image": torch.rand(1, 32, 32)}] * 4, "supervised", epochs=1, progress=False,
                 num_classes=2)


def test_bad_objective_and_options_are_config_errors():
    with pytest.raises(ConfigError, match="unknown pretraining objective 'simclr'"):
        pretrain(_vit(), [], "simclr")
    with pytest.raises(ConfigError, match=r"unknown mae option\(s\) \['out_dim'\]"):
        pretrain(_vit(), [{"image": torch.rand(1, 32, 32)}], "mae", out_dim=4)
    with pytest.raises(ConfigError, match="medxai ViT"):
        pretrain(M.create("small-cnn", 2, 1, width=4), [{"image": torch.rand(1, 32, 32)}], "mae")


def _image_folder(tmp_path, n: int = 8):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 36), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


def test_cli_pretrain_writes_both_files_from_a_plain_image_folder(tmp_path, capsys):
    from medxai.cli import _load_commands
    from medxai.cli._app import app

    folder = _image_folder(tmp_path)
    assert len(ImageFiles(folder, size=32)) == 8 and ImageFiles(folder, size=32)[0]["image"].shape == (1, 32, 32)
    _load_commands()
    out = tmp_path / "pre"
    app(args=["--quiet", "pretrain", "--objective", "mae", "--data", str(folder), "--out", str(out), "--epochs", "1",
              "--size", "32", "--set", "model.depth=1", "--set", "model.embed_dim=32", "--set", "model.num_heads=2",
              "--set", "batch_size=4"], standalone_mode=False)
    assert (out / "pretrained.safetensors").is_file() and (out / "pretrain.json").is_file()
    rec = json.loads((out / "pretrain.json").read_text())
    assert rec["objective"] == "mae" and len(rec["losses"]) == 1 and rec["settings"]["n_images"] == 8
    model = M.create("vit-ti8", 2, 1, img_size=32, depth=1, embed_dim=32, num_heads=2)
    init_vit(model, "mae", out / "pretrained.safetensors")
    assert "wrote" in capsys.readouterr().out


def test_cli_bad_objective_is_one_line_exit_2(tmp_path, capsys):
    from medxai.cli import _load_commands, main
    from medxai.cli._app import app

    _load_commands()
    args = ["--quiet", "pretrain", "--objective", "byol", "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    with pytest.raises(ConfigError, match="--objective must be one of mae, dino, supervised"):
        app(args=args, standalone_mode=False)
    with pytest.raises(SystemExit) as info:
        main(args)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "byol" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
