"""Model zoo: every registry name builds, runs on 1 and 3 channels, passes gradients to the input,
has the reference parameter count, normalises inside, and rebuilds from its config."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import medxai.models as M
from medxai.errors import ConfigError, InputError

EXPECTED = {
    "resnet18", "resnet34", "resnet50", "densenet121", *(f"efficientnet-b{i}" for i in range(8)),
    "mobilenet-v2", "inception-v3", "vit-b16", "vit-s16", "vit-ti16", "vit-s8", "vit-ti8", "vit-s4", "vit-ti4",
    "small-cnn", "resnet8",
}
# Reference counts at 1000 classes: torchvision resnet18/34/50, densenet121, mobilenet_v2,
# inception_v3 (aux_logits=True); lukemelas/MONAI EfficientNet-B0..B7 (TF weights layout);
# timm vit_{base,small,tiny}_patch16_224.
REFERENCE_PARAMS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "densenet121": 7_978_856,
    "efficientnet-b0": 5_288_548, "efficientnet-b1": 7_794_184, "efficientnet-b2": 9_109_994,
    "efficientnet-b3": 12_233_232, "efficientnet-b4": 19_341_616, "efficientnet-b5": 30_389_784,
    "efficientnet-b6": 43_040_704, "efficientnet-b7": 66_347_960, "mobilenet-v2": 3_504_872,
    "inception-v3": 27_161_264, "vit-b16": 86_567_656, "vit-s16": 22_050_664, "vit-ti16": 5_717_416,
}


def _size(name: str) -> int:
    return 75 if name == "inception-v3" else 32


def test_registry_lists_every_model() -> None:
    assert set(M.list_models()) == EXPECTED | {"small-cnn3d"}  # the volume model: tests/test_volumes_models.py
    assert M.REGISTRY.names() == M.list_models()
    with pytest.raises(ConfigError, match="resnet50"):
        M.create("resnet51", 2)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builds_runs_and_passes_gradients(name: str) -> None:
    torch.manual_seed(0)
    for in_chans, classes in ((3, 1000), (1, 2)):
        # one channel only changes the stem / patch embedding: 2 blocks are enough for a ViT there
        kw = {"depth": 2} if name.startswith("vit") and in_chans == 1 else {}
        model = M.create(name, classes, in_chans=in_chans, **kw).eval()
        if in_chans == 3 and name in REFERENCE_PARAMS:
            assert sum(p.numel() for p in model.parameters()) == REFERENCE_PARAMS[name]
        assert next(iter(model._modules)) == "normalize" and isinstance(model.normalize, M.Normalize)
        assert model.normalize.mean.shape == (1, in_chans, 1, 1)
        # description resolves to real modules
        for s in model.stages:
            model.get_submodule(s)
        seen = {}
        h = model.get_submodule(model.default_cam_layer).register_forward_hook(
            lambda _m, _i, out, seen=seen: seen.setdefault("out", out))
        s = _size(name)
        x = torch.rand(2, in_chans, s, s, requires_grad=True)
        try:
            y = model(x)
        finally:
            h.remove()
        assert y.shape == (2, classes) and torch.isfinite(y).all()
        (g,) = torch.autograd.grad(y[:, 0].sum(), x)
        assert torch.isfinite(g).all() and g.abs().sum() > 0
        if name.startswith("vit"):  # tokens (B, 1 + patches, D) at the last block's norm1
            assert model.default_cam_layer.endswith("norm1") and seen["out"].ndim == 3
            assert seen["out"].shape[1] == 1 + (s // model.patch_size) ** 2
        else:  # a spatial map (B, C, h, w)
            assert seen["out"].ndim == 4
        cfg = json.loads(json.dumps(model.medxai_config))
        assert cfg == {"name": name, "num_classes": classes, "in_chans": in_chans, "normalize": "imagenet", **kw}
        del model


def test_config_rebuilds_same_model() -> None:
    torch.manual_seed(0)
    m = M.create("vit-ti4", 3, in_chans=1, normalize=((0.3,), (0.2,)), img_size=16, depth=2, reg_tokens=2).eval()
    cfg = json.loads(json.dumps(m.medxai_config))
    assert cfg["img_size"] == 16 and cfg["normalize"] == [[0.3], [0.2]]
    m2 = M.create(**cfg).eval()
    m2.load_state_dict(m.state_dict())
    x = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(m2(x), m(x), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="JSON"):
        M.create("small-cnn", 2, width=object())
    with pytest.raises(ConfigError, match="small-cnn"):
        M.create("small-cnn", 2, no_such_option=1)


def test_normalisation_is_the_first_layer() -> None:
    x = torch.rand(2, 3, 8, 8)
    m = M.create("small-cnn", 2)
    torch.testing.assert_close(m.normalize(x), (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
                               / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
    g = M.create("small-cnn", 2, in_chans=1)  # mean of the ImageNet means / stds
    assert g.normalize.mean.flatten().tolist() == pytest.approx([(0.485 + 0.456 + 0.406) / 3])
    assert g.normalize.std.flatten().tolist() == pytest.approx([(0.229 + 0.224 + 0.225) / 3])
    c = M.create("small-cnn", 2, normalize=((0.5, 0.4, 0.3), 0.25))
    torch.testing.assert_close(c.normalize(x), (x - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / 0.25)
    assert isinstance(M.create("small-cnn", 2, normalize="none").normalize, nn.Identity)
    # the model's forward really applies it: shifting mean/std by the same affine map is invisible
    m.eval()
    ref = m(x)
    m2 = M.create("small-cnn", 2, normalize="none").eval()
    m2.load_state_dict(m.state_dict())
    torch.testing.assert_close(m2(m.normalize(x)), ref)
    for bad in ("zscore", ((0.5, 0.5), (0.2, 0.2, 0.2)), ((0.5,), (0.0,))):
        with pytest.raises(ConfigError):
            M.create("small-cnn", 2, normalize=bad)
    with pytest.raises(InputError, match="3"):
        m(torch.rand(1, 1, 8, 8))


def test_combined_concatenates_backbone_features() -> None:
    torch.manual_seed(0)
    m = M.create("combined:resnet8+small-cnn", 4, in_chans=1, dropout=0.0).eval()
    assert m.feature_dim == 64 + 64 and m.head.in_features == 128
    x = torch.rand(3, 1, 16, 16)
    z = m.normalize(x)
    feats = torch.cat([m.backbones[0](z), m.backbones[1](z)], dim=1)
    torch.testing.assert_close(m(x), feats @ m.head.weight.T + m.head.bias)
    assert m.default_cam_layer == "backbones.0.layer3" and m.stages[-1] == "head"
    # CheXpert-style: densenet121 (1024 features) + efficientnet-b0 (1280), one shared Linear
    big = M.create("combined:densenet121+efficientnet-b0", 14)
    n = sum(p.numel() for p in big.parameters())
    assert n == (7_978_856 - 1024 * 1000 - 1000) + (5_288_548 - 1280 * 1000 - 1000) + 2304 * 14 + 14
    with pytest.raises(ConfigError):
        M.create("combined:resnet8", 2)


def test_inception_auxiliary_head() -> None:
    torch.manual_seed(0)
    m = M.create("inception-v3", 3)
    # 1000 classes without the auxiliary head: 27,161,264 - 3,326,696 (conv0, conv1, fc of AuxLogits)
    aux_params = (768 * 128 + 2 * 128) + (128 * 768 * 25 + 2 * 768) + (768 * 3 + 3)
    assert sum(p.numel() for p in m.AuxLogits.parameters()) == aux_params
    m.train()
    x = torch.rand(2, 3, 299, 299)
    logits, aux = m.forward_with_aux(x)
    assert logits.shape == aux.shape == (2, 3)
    m.eval()
    with torch.no_grad():
        lo, none = m.forward_with_aux(x)
        torch.testing.assert_close(lo, m(x))
    assert none is None
    with pytest.raises(InputError, match="75"):
        m(torch.rand(1, 3, 64, 64))


def test_timm_adapter() -> None:
    pytest.importorskip("timm")
    m = M.create("timm:resnet18", 3, in_chans=1).eval()
    assert m(torch.rand(1, 1, 64, 64)).shape == (1, 3)
    m.get_submodule(m.default_cam_layer)


def test_torchvision_adapter() -> None:
    pytest.importorskip("torchvision")
    m = M.create("torchvision:resnet18", 3, in_chans=1).eval()
    assert m(torch.rand(1, 1, 64, 64)).shape == (1, 3)
    assert m.default_cam_layer == "net.layer4"


def test_unavailable_adapters_say_so() -> None:
    import importlib.util

    for pkg in ("timm", "torchvision"):
        if importlib.util.find_spec(pkg) is None:
            with pytest.raises(ConfigError, match=pkg):
                M.create(f"{pkg}:resnet18", 2)


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "efficientnet-b0", "mobilenet-v2"])
def test_no_layer_output_is_overwritten_in_place(name: str) -> None:
    """Hooks (CAMs, LRP, sanity checks) see each layer's output as it was produced."""
    m = M.create(name, 2).eval()
    seen = []
    hooks = [mod.register_forward_hook(lambda _m, _i, out, n=n: seen.append((n, out, out.clone())))
             for n, mod in m.named_modules() if n]
    try:
        with torch.no_grad():
            m(torch.rand(1, 3, 32, 32))
    finally:
        for h in hooks:
            h.remove()
    changed = [n for n, out, copy in seen if isinstance(out, torch.Tensor) and not torch.equal(out, copy)]
    assert len(seen) > 20 and changed == []
