"""Checkpoint loading: other libraries' layouts (key lists written here from the published
architectures, random values), head dropping, channel adaptation, position-embedding resampling,
clear errors, and refusal of pickles that would run code."""

from __future__ import annotations

import builtins
import pickle

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import medxai.models as M
from medxai.errors import CheckpointError


# --------------------------------------------------------------------------- reference layouts
def _bn(prefix: str, c: int) -> dict[str, tuple]:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def timm_vit_keys(dim: int = 768, depth: int = 12, patch: int = 16, grid: int = 14, classes: int | None = 1000,
                  norm: bool = True, fc_norm: bool = False) -> dict[str, tuple]:
    """timm VisionTransformer (vit_base_patch16_224 with the defaults)."""
    k = {"cls_token": (1, 1, dim), "pos_embed": (1, grid * grid + 1, dim),
         "patch_embed.proj.weight": (dim, 3, patch, patch), "patch_embed.proj.bias": (dim,)}
    for i in range(depth):
        b = f"blocks.{i}."
        k |= {b + "norm1.weight": (dim,), b + "norm1.bias": (dim,),
              b + "attn.qkv.weight": (3 * dim, dim), b + "attn.qkv.bias": (3 * dim,),
              b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,),
              b + "norm2.weight": (dim,), b + "norm2.bias": (dim,),
              b + "mlp.fc1.weight": (4 * dim, dim), b + "mlp.fc1.bias": (4 * dim,),
              b + "mlp.fc2.weight": (dim, 4 * dim), b + "mlp.fc2.bias": (dim,)}
    if norm:
        k |= {"norm.weight": (dim,), "norm.bias": (dim,)}
    if fc_norm:
        k |= {"fc_norm.weight": (dim,), "fc_norm.bias": (dim,)}
    if classes:
        k |= {"head.weight": (classes, dim), "head.bias": (classes,)}
    return k


def tv_resnet50_keys(classes: int = 1000) -> dict[str, tuple]:
    """torchvision resnet50: Bottleneck (stride on the 3x3), blocks (3, 4, 6, 3)."""
    k = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64)}
    inplanes = 64
    for li, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True), start=1):
        for j in range(blocks):
            p = f"layer{li}.{j}."
            k |= {p + "conv1.weight": (planes, inplanes, 1, 1), **_bn(p + "bn1", planes),
                  p + "conv2.weight": (planes, planes, 3, 3), **_bn(p + "bn2", planes),
                  p + "conv3.weight": (planes * 4, planes, 1, 1), **_bn(p + "bn3", planes * 4)}
            if j == 0:
                k |= {p + "downsample.0.weight": (planes * 4, inplanes, 1, 1), **_bn(p + "downsample.1", planes * 4)}
            inplanes = planes * 4
    return k | {"fc.weight": (classes, 2048), "fc.bias": (classes,)}


def tv_densenet121_keys(classes: int = 1000) -> dict[str, tuple]:
    """torchvision densenet121: growth 32, bn_size 4, blocks (6, 12, 24, 16), compression 0.5."""
    k = {"features.conv0.weight": (64, 3, 7, 7), **_bn("features.norm0", 64)}
    ch = 64
    for b, n in enumerate((6, 12, 24, 16), start=1):
        for j in range(1, n + 1):
            p = f"features.denseblock{b}.denselayer{j}."
            cin = ch + (j - 1) * 32
            k |= {**_bn(p + "norm1", cin), p + "conv1.weight": (128, cin, 1, 1),
                  **_bn(p + "norm2", 128), p + "conv2.weight": (32, 128, 3, 3)}
        ch += n * 32
        if b < 4:
            k |= {**_bn(f"features.transition{b}.norm", ch), f"features.transition{b}.conv.weight": (ch // 2, ch, 1, 1)}
            ch //= 2
    return k | _bn("features.norm5", ch) | {"classifier.weight": (classes, ch), "classifier.bias": (classes,)}


def tv_mobilenet_v2_keys(classes: int = 1000) -> dict[str, tuple]:
    """torchvision mobilenet_v2: table 2 of Sandler 2018."""
    k = {"features.0.0.weight": (32, 3, 3, 3), **_bn("features.0.1", 32)}
    cin, idx = 32, 1
    for t, c, n, _s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                        (6, 160, 3, 2), (6, 320, 1, 1)):
        for _ in range(n):
            p, h, j = f"features.{idx}.conv.", cin * t, 0
            if t != 1:
                k |= {p + "0.0.weight": (h, cin, 1, 1), **_bn(p + "0.1", h)}
                j = 1
            k |= {f"{p}{j}.0.weight": (h, 1, 3, 3), **_bn(f"{p}{j}.1", h), f"{p}{j + 1}.weight": (c, h, 1, 1),
                  **_bn(f"{p}{j + 2}", c)}
            cin, idx = c, idx + 1
    return k | {f"features.{idx}.0.weight": (1280, 320, 1, 1), **_bn(f"features.{idx}.1", 1280),
                "classifier.1.weight": (classes, 1280), "classifier.1.bias": (classes,)}


def random_state(keys: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in keys.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            out[k] = torch.rand(shape, generator=g) + 0.5
        else:
            out[k] = torch.randn(shape, generator=g) * 0.05
    return out


def n_params(keys: dict[str, tuple]) -> int:
    return sum(torch.Size(s).numel() for k, s in keys.items() if not k.endswith(("running_mean", "running_var",
                                                                                    "num_batches_tracked")))


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def vit_b16():
    return M.create("vit-b16", 1000)


@pytest.fixture(scope="module")
def timm_vit_state():
    keys = timm_vit_keys()
    assert n_params(keys) == 86_567_656  # the layout itself matches timm's vit_base_patch16_224
    return random_state(keys)


# --------------------------------------------------------------------------- ViT-B/16: timm, DINO, MAE
def test_timm_vit_base_loads_strictly(vit_b16, timm_vit_state) -> None:
    # (in memory: writing 350 MB per test is slow; the file formats are tested on small models)
    rep = M.load_weights(vit_b16, timm_vit_state)
    assert rep.missing == [] and rep.unexpected == [] and rep.dropped_head == [] and rep.adapted == []
    assert sorted(rep.loaded) == sorted(timm_vit_state)
    sd = vit_b16.state_dict()
    for k in ("pos_embed", "blocks.7.attn.qkv.weight", "blocks.11.mlp.fc2.bias", "head.weight", "cls_token"):
        assert torch.equal(sd[k], timm_vit_state[k])
    # a wrong backbone shape is a clear error naming key and both shapes
    bad = dict(timm_vit_state)
    bad["blocks.3.mlp.fc1.weight"] = torch.zeros(3072, 384)
    with pytest.raises(CheckpointError, match=r"blocks\.3\.mlp\.fc1\.weight.*\(3072, 384\).*\(3072, 768\)"):
        M.load_weights(vit_b16, bad)
    # a head of another size (1000 -> 2 classes) is dropped and reported, the rest loads
    two = M.create("vit-b16", 2, depth=2)
    sub = {k: v for k, v in timm_vit_state.items() if not k.startswith("blocks.") or int(k.split(".")[1]) < 2}
    rep = M.load_weights(two, sub)
    assert rep.dropped_head == ["head.bias", "head.weight"] and rep.missing == ["head.weight", "head.bias"]
    assert rep.unexpected == [] and torch.equal(two.blocks[1].attn.proj.weight, sub["blocks.1.attn.proj.weight"])


def test_dino_vit_base_loads_without_head(vit_b16, timm_vit_state) -> None:
    dino = {k: v for k, v in timm_vit_state.items() if not k.startswith("head.")}  # dino_vitbase16_pretrain.pth
    with torch.no_grad():
        vit_b16.head.weight.fill_(0.123)
    rep = M.load_weights(vit_b16, dino)
    assert rep.missing == ["head.weight", "head.bias"] and rep.unexpected == [] and rep.dropped_head == []
    assert len(rep.loaded) == len(dino)
    assert torch.equal(vit_b16.blocks[3].norm1.weight, dino["blocks.3.norm1.weight"])
    assert torch.all(vit_b16.head.weight == 0.123)  # untouched
    # DINO's full training checkpoint: teacher weights under "backbone.", projection head unexpected
    full = {"teacher": {**{"backbone." + k: v for k, v in dino.items()},
                        "head.mlp.0.weight": torch.zeros(2048, 768)}, "epoch": 100}
    rep = M.load_weights(vit_b16, full)
    assert rep.unexpected == ["head.mlp.0.weight"] and len(rep.loaded) == len(dino)


def test_mae_vit_base_loads_under_model_key(vit_b16, timm_vit_state) -> None:
    mae = {k: v for k, v in timm_vit_state.items() if not k.startswith("head.")}  # mae_pretrain_vit_base.pth
    with torch.no_grad():
        vit_b16.norm.bias.zero_()
    rep = M.load_weights(vit_b16, {"model": mae, "optimizer": {}, "epoch": 799})
    assert rep.missing == ["head.weight", "head.bias"] and rep.unexpected == []
    assert torch.equal(vit_b16.patch_embed.proj.weight, mae["patch_embed.proj.weight"])
    assert torch.equal(vit_b16.norm.bias, mae["norm.bias"])


def test_mae_finetuned_global_pool_layout_and_head_drop(tmp_path) -> None:
    # MAE fine-tuned with global pooling: fc_norm instead of norm, 1000-class head; our model has 3 classes
    keys = timm_vit_keys(dim=192, depth=2, norm=False, fc_norm=True)
    sd = random_state(keys, seed=1)
    torch.save({"model": sd}, tmp_path / "mae_finetuned.pth")
    m = M.create("vit-ti16", 3, depth=2, global_pool="avg")
    rep = M.load_weights(m, tmp_path / "mae_finetuned.pth")
    assert rep.dropped_head == ["head.bias", "head.weight"]
    assert rep.missing == ["head.weight", "head.bias"] and rep.unexpected == []
    assert torch.equal(m.fc_norm.weight, sd["fc_norm.weight"])
    # the MAE pre-training layout (norm, no fc_norm) into the same model: norm unexpected, fc_norm fresh
    keys = timm_vit_keys(dim=192, depth=2, classes=None)
    rep = M.load_weights(m, random_state(keys))
    assert rep.unexpected == ["norm.weight", "norm.bias"] and rep.missing == ["fc_norm.weight", "fc_norm.bias",
                                                                              "head.weight", "head.bias"]


def test_pos_embed_resampled_from_14x14(tmp_path) -> None:
    keys = timm_vit_keys(dim=192, depth=2, classes=None)
    sd = random_state(keys, seed=2)
    m = M.create("vit-ti16", 2, depth=2, img_size=96).eval()  # 6x6 grid
    rep = M.load_weights(m, sd)
    assert rep.adapted == ["pos_embed: (1, 197, 192) -> (1, 37, 192) (bicubic resampling)"]
    src = sd["pos_embed"]
    grid = src[:, 1:].reshape(1, 14, 14, 192).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False, antialias=True)
    ref = torch.cat([src[:, :1], ref.permute(0, 2, 3, 1).reshape(1, 36, 192)], dim=1)
    torch.testing.assert_close(m.pos_embed.detach(), ref, rtol=0, atol=1e-6)
    y = m(torch.rand(2, 3, 96, 96))
    assert y.shape == (2, 2) and torch.isfinite(y).all()
    # upsampling to 20x16 (non-square) through resample_pos_embed directly
    up = M.resample_pos_embed(src, (20, 16))
    ref = F.interpolate(grid, size=(20, 16), mode="bicubic", align_corners=False, antialias=True)
    torch.testing.assert_close(up[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 320, 192), rtol=0, atol=1e-6)
    assert torch.equal(up[:, :1], src[:, :1])


# --------------------------------------------------------------------------- torchvision CNNs
def _bn_eval(x, sd, p, eps=1e-5):
    return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"],
                        False, 0.0, eps)


def tv_resnet50_forward(sd, x):
    """torchvision resnet50 forward written from the paper/torchvision structure (eval mode)."""
    x = F.relu(_bn_eval(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), sd, "bn1"))
    x = F.max_pool2d(x, 3, 2, 1)
    for li, blocks in enumerate((3, 4, 6, 3), start=1):
        for j in range(blocks):
            p = f"layer{li}.{j}."
            stride = 2 if (j == 0 and li > 1) else 1
            h = F.relu(_bn_eval(F.conv2d(x, sd[p + "conv1.weight"]), sd, p + "bn1"))
            h = F.relu(_bn_eval(F.conv2d(h, sd[p + "conv2.weight"], stride=stride, padding=1), sd, p + "bn2"))
            h = _bn_eval(F.conv2d(h, sd[p + "conv3.weight"]), sd, p + "bn3")
            idt = _bn_eval(F.conv2d(x, sd[p + "downsample.0.weight"], stride=stride), sd, p + "downsample.1") \
                if j == 0 else x
            x = F.relu(h + idt)
    return F.linear(x.mean((2, 3)), sd["fc.weight"], sd["fc.bias"])


def tv_densenet121_forward(sd, x):
    x = F.relu(_bn_eval(F.conv2d(x, sd["features.conv0.weight"], stride=2, padding=3), sd, "features.norm0"))
    x = F.max_pool2d(x, 3, 2, 1)
    for b, n in enumerate((6, 12, 24, 16), start=1):
        for j in range(1, n + 1):
            p = f"features.denseblock{b}.denselayer{j}."
            h = F.conv2d(F.relu(_bn_eval(x, sd, p + "norm1")), sd[p + "conv1.weight"])
            h = F.conv2d(F.relu(_bn_eval(h, sd, p + "norm2")), sd[p + "conv2.weight"], padding=1)
            x = torch.cat([x, h], 1)
        if b < 4:
            p = f"features.transition{b}."
            x = F.avg_pool2d(F.conv2d(F.relu(_bn_eval(x, sd, p + "norm")), sd[p + "conv.weight"]), 2, 2)
    x = F.relu(_bn_eval(x, sd, "features.norm5"))
    return F.linear(x.mean((2, 3)), sd["classifier.weight"], sd["classifier.bias"])


def test_torchvision_resnet50_loads_and_computes_the_same() -> None:
    keys = tv_resnet50_keys()
    assert n_params(keys) == 25_557_032
    sd = random_state(keys, seed=3)
    m = M.create("resnet50", 1000, pretrained=sd).eval()
    rep = m.medxai_load_report
    assert rep.missing == [] and rep.unexpected == [] and rep.dropped_head == [] and len(rep.loaded) == len(keys)
    assert torch.equal(m.layer3[2].conv2.weight, sd["layer3.2.conv2.weight"])
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), tv_resnet50_forward(sd, m.normalize(x)), rtol=1e-4, atol=1e-5)
    # head of another size dropped and reported; wrong backbone shape is a clear error
    m2 = M.create("resnet50", 2)
    rep = M.load_weights(m2, sd)
    assert rep.dropped_head == ["fc.bias", "fc.weight"] and rep.missing == ["fc.weight", "fc.bias"]
    assert torch.equal(m2.layer1[0].conv1.weight, sd["layer1.0.conv1.weight"])
    bad = dict(sd)
    bad["layer2.0.conv1.weight"] = torch.zeros(128, 256, 3, 3)
    with pytest.raises(CheckpointError, match=r"layer2\.0\.conv1\.weight.*\(128, 256, 3, 3\).*\(128, 256, 1, 1\)"):
        M.load_weights(m2, bad)
    # one input channel: first conv summed over RGB (timm's adapt_input_conv)
    m1 = M.create("resnet50", 1000, in_chans=1)
    rep = M.load_weights(m1, {"state_dict": {"module." + k: v for k, v in sd.items()}})
    assert rep.adapted == ["conv1.weight: 3 -> 1 input channels"] and rep.missing == []
    torch.testing.assert_close(m1.conv1.weight.detach(), sd["conv1.weight"].sum(1, keepdim=True))


def test_torchvision_densenet121_loads_and_computes_the_same() -> None:
    keys = tv_densenet121_keys()
    assert n_params(keys) == 7_978_856
    sd = random_state(keys, seed=4)
    m = M.create("densenet121", 1000).eval()
    rep = M.load_weights(m, sd)
    assert rep.missing == [] and rep.unexpected == [] and len(rep.loaded) == len(keys)
    assert torch.equal(m.features.denseblock2.denselayer5.layers.conv1.weight,
                       sd["features.denseblock2.denselayer5.conv1.weight"])
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), tv_densenet121_forward(sd, m.normalize(x)), rtol=1e-4, atol=1e-5)
    # torchvision's old checkpoint names ("norm.1", "conv.2") map too
    old = {k.replace("norm1.", "norm.1.").replace("conv2.", "conv.2.") if "denselayer" in k else k: v
           for k, v in sd.items()}
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    rep = M.load_weights(M.create("densenet121", 5), old)
    assert rep.unexpected == [] and rep.dropped_head == ["class_layers.out.bias", "class_layers.out.weight"]


def test_torchvision_mobilenet_v2_loads_strictly() -> None:
    keys = tv_mobilenet_v2_keys()
    assert n_params(keys) == 3_504_872
    sd = random_state(keys, seed=5)
    m = M.create("mobilenet-v2", 1000)
    rep = M.load_weights(m, sd)
    assert rep.missing == [] and rep.unexpected == [] and len(rep.loaded) == len(keys)
    assert torch.equal(m.features[5].conv[1][0].weight, sd["features.5.conv.1.0.weight"])


def test_efficientnet_flat_lukemelas_names_map_to_monai_stages() -> None:
    torch.manual_seed(0)
    src = M.create("efficientnet-b0", 4).eval()
    nested = [f"_blocks.{s}.{name}." for s, st in enumerate(src._blocks) for name in st._modules]
    assert nested[:4] == ["_blocks.0.0.", "_blocks.1.1.", "_blocks.1.2.", "_blocks.2.3."]
    flat = {}
    for k, v in src.state_dict().items():
        for n, pre in enumerate(nested):
            if k.startswith(pre):
                k = f"_blocks.{n}." + k[len(pre):]
                break
        flat[k] = v
    assert "_blocks.15._project_conv.weight" in flat  # efficientnet_pytorch's flat numbering
    dst = M.create("efficientnet-b0", 4).eval()
    rep = M.load_weights(dst, flat)
    assert rep.missing == [] and rep.unexpected == []
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


# --------------------------------------------------------------------------- errors and safety
def test_nothing_matched_and_missing_backbone_are_errors() -> None:
    m = M.create("resnet8", 2)
    with pytest.raises(CheckpointError, match="no tensor matched"):
        M.load_weights(m, {"foo.weight": torch.zeros(3)})
    sd = {k: v for k, v in m.state_dict().items() if not k.startswith("layer3.")}
    with pytest.raises(CheckpointError, match=r"layer3\..*strict_backbone=False"):
        M.load_weights(m, sd)
    rep = M.load_weights(m, sd, strict_backbone=False)
    assert rep.missing and all(k.startswith("layer3.") for k in rep.missing)
    with pytest.raises(CheckpointError, match="no tensors"):
        M.load_weights(m, {"epoch": 3})


def test_combined_backbones_load_separately(tmp_path) -> None:
    a = M.create("resnet8", 2)
    b = M.create("small-cnn", 2)
    torch.save(a.state_dict(), tmp_path / "a.pt")
    save_file(b.state_dict(), str(tmp_path / "b.safetensors"))
    c = M.create("combined:resnet8+small-cnn", 3, pretrained=[tmp_path / "a.pt", tmp_path / "b.safetensors"])
    ra, rb = c.medxai_load_report
    assert sorted(ra.unexpected) == ["fc.bias", "fc.weight"]
    assert sorted(rb.unexpected) == ["classifier.bias", "classifier.weight"]
    assert torch.equal(c.backbones[0].layer2[0].conv1.weight, a.layer2[0].conv1.weight)
    assert torch.equal(c.backbones[1].features.block3[0].weight, b.features.block3[0].weight)


class _Evil:
    """Unpickling this calls open(path, "w"): a file appears if a loader runs pickled code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


def test_malicious_pickle_is_refused(tmp_path) -> None:
    marker = tmp_path / "pwned"
    m = M.create("resnet8", 2)
    evil_zip = tmp_path / "evil.pth"
    torch.save({"state_dict": m.state_dict(), "payload": _Evil(str(marker))}, evil_zip)
    evil_legacy = tmp_path / "evil_legacy.pt"
    with open(evil_legacy, "wb") as f:
        pickle.dump({"payload": _Evil(str(marker))}, f, protocol=2)
    assert not marker.exists()
    for path in (evil_zip, evil_legacy):
        with pytest.raises(CheckpointError, match="refused"):
            M.load_weights(m, path)
        with pytest.raises(CheckpointError):
            M.create("resnet8", 2, pretrained=path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match=r"refused: .*open.*could run code"):
        M.load_weights(m, evil_zip)


def test_unsupported_or_broken_files_are_refused(tmp_path) -> None:
    m = M.create("resnet8", 2)
    (tmp_path / "w.ckpt").write_bytes(b"x")
    (tmp_path / "w.safetensors").write_bytes(b"not safetensors")
    (tmp_path / "w.pth").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="unsupported"):
        M.load_weights(m, tmp_path / "w.ckpt")
    with pytest.raises(CheckpointError, match="safetensors"):
        M.load_weights(m, tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match="cannot read"):
        M.load_weights(m, tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match="no such"):
        M.load_weights(m, tmp_path / "missing.pth")
