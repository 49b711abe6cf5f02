"""ViT attention explanations: raw attention, rollout, Chefer 2021b, Chefer 2021a (LRP), ViT Grad-CAM.

References, one image at a time (``benchmarks/_vit_reference.py``, also the benchmark's peers):
forward hooks on the explicit attention path (the Dropout after the softmax receives the
probabilities), gradients by ``Tensor.register_hook`` and ``backward()`` as the reference code
does, full N x N rollout matrices, and for Chefer 2021a an autograd-based LRP in the style of
Chefer's ``layers_ours.py`` (``gradprop``: x * d(z)/d(x) . s) fed by hooks on the model's own
modules. The trained-model test learns the synthetic skin-lesion study (lesions rolled off-centre)
with a 2-block patch-4 ViT at 32 px and scores the maps against the lesion masks, next to an
untrained model and a centre prior.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import medxai.models as M
from medxai.errors import ConfigError, InputError
from medxai.explain import (
    REGISTRY,
    AttentionRollout,
    CheferGeneric,
    CheferLRP,
    GradCAM,
    RawAttention,
    explain,
    vit_lrp,
)
from medxai.models.vit import Attention

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import _vit_reference as R
from benchmarks._vit_reference import explicit_probs, fuse

torch.set_num_threads(1)


def _vit(seed: int = 0, reg: int = 0, depth: int = 3, size: int = 16, **kw) -> torch.nn.Module:
    """A tiny ViT (patch 4, 4 heads of 8) with weights large enough for peaked attention."""
    torch.manual_seed(seed)
    m = M.create("vit-ti4", 5, 3, img_size=size, depth=depth, embed_dim=32, num_heads=4, reg_tokens=reg, **kw)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("qkv.weight"):
                p.normal_(0, 2.5 / math.sqrt(p.shape[1]))
            elif p.ndim == 2:
                p.normal_(0, 1 / math.sqrt(p.shape[1]))
            elif name.endswith("proj.weight") and p.ndim == 4:
                p.normal_(0, 1 / math.sqrt(p[0].numel()))
            elif name.endswith((".bias", "gamma")) or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
            else:  # cls / reg tokens, position embeddings
                p.normal_(0, 0.5)
    return m.eval()


def _x(b: int = 3, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    """max |a - b| <= tol * max |b| (maps of any scale)."""
    scale = float(b.abs().max())
    err = float((a - b).abs().max())
    assert a.shape == b.shape, (a.shape, b.shape)
    assert err <= tol * max(scale, 1e-12), f"max abs error {err:.3g} for max |ref| {scale:.3g} (tol {tol})"


# --------------------------------------------------------------------------- reference implementations
# one image at a time, in the papers' code's way: benchmarks/_vit_reference.py (also the benchmark's peers)


def _up(row, model, size, mode):
    g = math.isqrt(row.numel())
    grid = row.reshape(1, 1, g, g)
    if mode is None:
        return grid[0]
    kw = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(grid, size=(size, size), mode=mode, **kw)[0]


def ref_raw(model, x1, layer=-1, fusion="mean", mode="bilinear"):
    with explicit_probs(model) as st, torch.no_grad():
        model(x1)
    a = fuse(st[layer][0], fusion)
    return _up(a[0, model.num_prefix_tokens:], model, x1.shape[-1], mode)


def ref_rollout(model, x1, fusion="mean", discard=0.0, start=0, mode="bilinear"):
    return _up(R.rollout_row(model, x1, fusion, discard, start), model, x1.shape[-1], mode)


def ref_generic(model, x1, target, mode="bilinear", output="logit"):
    return _up(R.generic_row(model, x1, target, output), model, x1.shape[-1], mode)


def ref_lrp(model, x1, target, start=0):
    """One image: (map on the grid, per-block R_A (heads, N, N), pixel relevance (C, H, W))."""
    row, r_attn, pix = R.lrp(model, x1, target, start)
    g = math.isqrt(row.numel())
    return row.reshape(1, g, g), r_attn, pix


# --------------------------------------------------------------------------- raw attention, rollout, 2021b

@pytest.mark.parametrize(("fusion", "layer", "mode", "reg"),
                         [("mean", -1, "bilinear", 0), ("max", 1, "nearest", 0), ("min", 0, None, 2)])
def test_raw_attention_equals_hooked_reference(fusion, layer, mode, reg):
    model, x = _vit(reg=reg), _x()
    ours = RawAttention(model, layer=layer, head_fusion=fusion, upsample=mode or False).attribute(x, [0, 1, 2])
    ref = torch.stack([ref_raw(model, x[i:i + 1], layer, fusion, mode) for i in range(3)])
    _close(ours, ref)
    assert ours.shape == ((3, 1, 16, 16) if mode else (3, 1, 4, 4))
    assert float(ref.std()) > 0.1 * float(ref.mean())  # attention is far from uniform: the test can fail


def test_nearest_upsampling_repeats_each_patch_value():
    model, x = _vit(), _x()
    grid = RawAttention(model, upsample=False).attribute(x)
    near = RawAttention(model, upsample="nearest").attribute(x)
    torch.testing.assert_close(near, grid.repeat_interleave(4, -1).repeat_interleave(4, -2), rtol=0, atol=0)
    bil = RawAttention(model).attribute(x)
    torch.testing.assert_close(bil, F.interpolate(grid, size=16, mode="bilinear", align_corners=False))


@pytest.mark.parametrize(("fusion", "discard", "start", "reg"),
                         [("mean", 0.0, 0, 0), ("max", 0.9, 0, 0), ("min", 0.5, 1, 1), ("mean", 0.3, 2, 4)])
def test_rollout_equals_matrix_loop_reference(fusion, discard, start, reg):
    model, x = _vit(reg=reg), _x()
    ours = AttentionRollout(model, head_fusion=fusion, discard_ratio=discard, start_layer=start).attribute(x)
    ref = torch.stack([ref_rollout(model, x[i:i + 1], fusion, discard, start) for i in range(3)])
    _close(ours, ref)


@pytest.mark.parametrize("reg", [0, 2])
def test_chefer_generic_equals_backward_hook_reference(reg):
    model, x = _vit(reg=reg), _x()
    t = torch.tensor([4, 0, 2])
    ours = CheferGeneric(model).attribute(x, t)
    ref = torch.stack([ref_generic(model, x[i:i + 1], int(t[i])) for i in range(3)])
    _close(ours, ref)
    # targets matter: another class gives another map
    other = CheferGeneric(model).attribute(x, (t + 1) % 5)
    assert float((other - ours).abs().max()) > 1e-3 * float(ours.abs().max())


def test_chefer_generic_explains_the_softmax_probability_when_asked():
    model, x = _vit(), _x()
    t = torch.tensor([1, 2, 3])
    ours = CheferGeneric(model, output="softmax").attribute(x, t)
    ref = torch.stack([ref_generic(model, x[i:i + 1], int(t[i]), output="softmax") for i in range(3)])
    _close(ours, ref)
    assert float((ours - CheferGeneric(model).attribute(x, t)).abs().max()) > 1e-3 * float(ours.abs().max())


@pytest.mark.parametrize("cls", [RawAttention, AttentionRollout, CheferGeneric, CheferLRP])
def test_non_square_images_use_the_model_grid(cls):
    model = _vit()
    x = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(3))
    grid = cls(model, upsample=False).attribute(x, [0, 1])
    assert grid.shape == (2, 1, 4, 6)
    up = cls(model).attribute(x, [0, 1])
    _close(up, F.interpolate(grid, size=(16, 24), mode="bilinear", align_corners=False))
    if cls is RawAttention:
        with explicit_probs(model) as st, torch.no_grad():
            model(x)
        _close(grid, st[-1].mean(1)[:, 0, 1:].reshape(2, 1, 4, 6))


def test_lrp_functional_forward_is_the_models_forward():
    from medxai.explain.attention import _forward_record

    for kw, size in (({}, (16, 24)), ({"reg": 2, "init_values": 0.3}, (16, 16)), ({"global_pool": "avg"}, (20, 16)),
                     ({"no_embed_class": True}, (24, 16))):
        model = _vit(**kw)
        x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(4))
        with torch.no_grad(), explicit_probs(model) as st:
            ref = model(x)
            ours, rec = _forward_record(model, x)
        torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
        for a, b in zip(st[: len(rec["blocks"])], rec["blocks"], strict=True):  # the model's forward first
            torch.testing.assert_close(a, b["A"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("cls", [RawAttention, AttentionRollout, CheferGeneric, CheferLRP])
def test_batched_equals_per_sample_with_several_targets(cls):
    model, x = _vit(reg=1), _x(b=4)
    t = torch.tensor([[0, 3], [1, 1], [4, 2], [2, 0]])
    ours = cls(model).attribute(x, t)
    assert ours.shape == (4, 2, 1, 16, 16)
    each = torch.cat([cls(model).attribute(x[i:i + 1], t[i:i + 1]) for i in range(4)])
    _close(ours, each, 1e-5)
    single = torch.stack([cls(model).attribute(x, t[:, j]) for j in range(2)], 1)
    _close(ours, single, 1e-6)


def test_predicted_class_and_top_k_come_from_the_explaining_forward():
    model, x = _vit(), _x(b=3)
    with torch.no_grad():
        logits = model(x)
    pred = logits.argmax(1)
    _close(CheferGeneric(model).attribute(x), CheferGeneric(model).attribute(x, pred), 0)
    top = torch.sort(logits, dim=1, descending=True, stable=True).indices[:, :2]
    _close(CheferLRP(model).attribute(x, top_k=2), CheferLRP(model).attribute(x, top), 0)


# --------------------------------------------------------------------------- Chefer 2021a (LRP)

def _conservation_pairs(depth: int) -> list[tuple[list[str], list[str]]]:
    """(left, right) lists of stage names whose relevance totals the rules keep equal."""
    pairs = [(["head.in"], ["output"]), (["tokens"], ["head.in"]), ([f"blocks.{depth - 1}.out"], ["tokens"])]
    for i in range(depth):
        b = f"blocks.{i}"
        pairs += [([f"{b}.mlp.hidden"], [f"{b}.mlp.out"]), ([f"{b}.mlp.in"], [f"{b}.mlp.hidden"]),
                  ([f"{b}.mid"], [f"{b}.out"]), ([f"{b}.attn.ctx"], [f"{b}.attn.out"]),
                  ([f"{b}.attn.probs", f"{b}.attn.v"], [f"{b}.attn.ctx"]), ([f"{b}.attn.qk"], [f"{b}.attn.probs"]),
                  ([f"{b}.attn.in"], [f"{b}.attn.qk", f"{b}.attn.v"]), ([f"{b}.in"], [f"{b}.out"])]
        if i:
            pairs.append(([f"blocks.{i - 1}.out"], [f"{b}.in"]))
    pairs += [(["embed.out"], ["blocks.0.in"]), (["embed.pos", "embed.prefix", "embed.patches"], ["embed.out"]),
              (["input"], ["embed.patches"])]
    return pairs


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-9), (torch.float32, 2e-4)])
@pytest.mark.parametrize("kw", [{}, {"reg": 2, "init_values": 0.5}, {"global_pool": "avg"}])
def test_lrp_relevance_is_conserved_layer_by_layer(dtype, tol, kw):
    model, x = _vit(**kw).to(dtype), _x(b=3).to(dtype)
    tr = vit_lrp(model, x, torch.tensor([0, 2, 4]))
    assert torch.allclose(tr.sums["output"], torch.ones(3, dtype=dtype))
    for left, right in _conservation_pairs(len(model.blocks)):
        lhs = sum(tr.sums[k] for k in left)
        rhs = sum(tr.sums[k] for k in right)
        err = float((lhs - rhs).abs().max())
        assert err <= tol, f"{left} vs {right}: {err:.3g}"
    # end to end: what the pixels do not get went to the CLS/register tokens and position embeddings
    total = tr.sums["input"] + tr.sums["embed.pos"] + tr.sums["embed.prefix"]
    assert float((total - 1).abs().max()) <= 10 * tol
    assert float((tr.sums["input"] - 1).abs().min()) > 0.01  # the position embeddings took a share
    assert tr.input.shape == x.shape and tr.input.dtype == dtype


def test_lrp_equals_autograd_reference_per_sample():
    model, x = _vit(depth=3).double(), _x(b=3).double()
    t = torch.tensor([1, 4, 0])
    tr = vit_lrp(model, x, t)
    for start in (0, 1):
        ours = CheferLRP(model, start_layer=start, upsample=False).attribute(x, t)
        for i in range(3):
            ref_map, ref_attn, ref_pix = ref_lrp(model, x[i:i + 1], int(t[i]), start)
            _close(ours[i], ref_map, 1e-10)
            if start == 0:
                for li in range(3):
                    _close(tr.attn[li][i], ref_attn[li], 1e-9)
                _close(tr.input[i], ref_pix, 1e-9)
    # the maps are not dominated by the identity: the LRP term changes them
    assert float(ours.std()) > 1e-3 * float(ours.abs().max())


def test_lrp_float32_agrees_with_float64():
    model, x, t = _vit(), _x(b=2), torch.tensor([2, 3])
    m32 = CheferLRP(model).attribute(x, t)
    m64 = CheferLRP(_vit().double()).attribute(x.double(), t)
    _close(m32.double(), m64, 1e-4)
    assert m32.dtype == torch.float32 and m64.dtype == torch.float64


def test_lrp_domain_bounds_and_no_embed_class():
    model, x = _vit(no_embed_class=True).double(), _x(b=2).double()
    tr = vit_lrp(model, x, torch.tensor([0, 1]), bounds="domain")
    total = tr.sums["input"] + tr.sums["embed.pos"] + tr.sums["embed.prefix"]
    torch.testing.assert_close(total, torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-9)


# --------------------------------------------------------------------------- ViT Grad-CAM

def test_vit_gradcam_equals_hand_computation_on_norm1_tokens():
    model, x = _vit(reg=2), _x(b=3)
    t = torch.tensor([3, 0, 1])
    ours = explain(model, x, "gradcam", target=t)
    assert GradCAM(model).layer is None and model.default_cam_layer == "blocks.2.norm1"
    layer = model.blocks[-1].norm1
    refs = []
    for i in range(3):
        store: dict = {}
        h = layer.register_forward_hook(lambda _m, _i, o, store=store: store.setdefault("a", o))
        try:
            out = model(x[i:i + 1])
        finally:
            h.remove()
        a = store["a"][0, 3:]  # CLS + 2 registers dropped
        (g,) = torch.autograd.grad(out[0, t[i]], store["a"])
        w = g[0, 3:].mean(0)
        cam = (a * w).sum(-1).clamp(min=0).reshape(1, 1, 4, 4)
        refs.append(F.interpolate(cam, size=16, mode="bilinear", align_corners=False)[0])
    _close(ours, torch.stack(refs).detach(), 1e-5)


def test_cnn_gradient_methods_work_unchanged_on_a_vit():
    """Saliency and Input x Gradient equal autograd run one image at a time; SmoothGrad with sigma 0
    is the gradient; IG is complete to 1% at 50 Gauss-Legendre steps on a freshly initialised ViT."""
    from medxai.explain import InputXGradient, IntegratedGradients, Saliency, SmoothGrad

    model, x = _vit(reg=1), _x(b=3)
    t = torch.tensor([2, 0, 4])
    refs = []
    for i in range(3):
        xi = x[i : i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(xi)[0, t[i]], xi)
        refs.append(g[0])
    g = torch.stack(refs)
    _close(Saliency(model, absolute=False).attribute(x, t), g)
    _close(InputXGradient(model).attribute(x, t), x * g)
    _close(SmoothGrad(model, n_samples=2, sigma=0.0).attribute(x, t), g)
    torch.manual_seed(0)  # IG on a ViT as initialised (``_vit``'s sharpened attention is far from smooth)
    model = M.create("vit-ti4", 5, 3, img_size=16, depth=3, embed_dim=32, num_heads=4).eval()
    with torch.no_grad():
        moves = model(x) - model(torch.zeros_like(x))
    tig = moves.abs().argmax(1)  # the output that moves most between the black baseline and x
    gap = moves.gather(1, tig[:, None])[:, 0]
    attr, delta = IntegratedGradients(model, n_steps=50).attribute(x, tig, return_convergence_delta=True)
    torch.testing.assert_close(delta, attr.flatten(1).sum(1) - gap, atol=1e-5, rtol=1e-5)
    assert float(gap.abs().min()) > 0.05, gap
    assert float((delta.abs() / gap.abs()).max()) < 0.01, (delta, gap)


# --------------------------------------------------------------------------- contract, registry, restoration

def test_registry_names_and_explain_by_name():
    assert REGISTRY["raw_attention"] is RawAttention and REGISTRY["rollout"] is AttentionRollout
    assert REGISTRY["chefer_generic"] is CheferGeneric and REGISTRY["chefer"] is CheferGeneric
    assert REGISTRY["chefer_lrp"] is CheferLRP
    model, x = _vit(), _x(b=2)
    near = explain(model, x, "raw_attention", upsample_mode="nearest")
    _close(near, torch.stack([ref_raw(model, x[i:i + 1], mode="nearest") for i in range(2)]))
    roll = explain(model, x, "rollout", discard_ratio=0.5, normalize="minmax")
    assert float(roll.amin((1, 2, 3)).abs().max()) == 0 and torch.allclose(roll.amax((1, 2, 3)), torch.ones(2))


def _state(model):
    return ([m.training for m in model.modules()], [(p.requires_grad, p.grad) for p in model.parameters()],
            [(a.fused_attn, a.capture, a.attn_probs) for a in model.modules() if isinstance(a, Attention)],
            sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()))


@pytest.mark.parametrize("cls", [RawAttention, AttentionRollout, CheferGeneric, CheferLRP])
def test_model_restored_also_on_error(cls):
    model = _vit().train()
    before = _state(model)
    cls(model).attribute(_x(b=2), 1)
    after = _state(model)
    assert after[0] == before[0] and after[2] == before[2] and after[3] == before[3]
    assert all(a[0] == b[0] and a[1] is b[1] for a, b in zip(after[1], before[1], strict=True))
    with pytest.raises(InputError):
        cls(model).attribute(_x(b=2), 7)  # out of range, found after the forward
    assert _state(model)[2] == before[2] and _state(model)[0] == before[0]


def test_refusals():
    model = _vit()
    cnn = M.create("small-cnn", 2, 3)
    for cls in (RawAttention, AttentionRollout, CheferGeneric, CheferLRP):
        with pytest.raises(ConfigError):
            cls(cnn)
    with pytest.raises(ConfigError):
        RawAttention(model, head_fusion="median")
    with pytest.raises(ConfigError):
        RawAttention(model, layer=3)
    with pytest.raises(ConfigError):
        AttentionRollout(model, discard_ratio=1.0)
    with pytest.raises(ConfigError):
        CheferLRP(model, start_layer=3)
    with pytest.raises(ConfigError):
        RawAttention(model, upsample="bicubic")
    with pytest.raises(InputError):
        RawAttention(model).attribute(_x(b=1) * 2)


# --------------------------------------------------------------------------- a trained ViT, scored maps

class _Study(torch.utils.data.Dataset):
    """The synthetic skin-lesion study at 32 px, every image and its lesion mask rolled by the same
    random shift of up to +-``shift`` px per axis (seeded per split). Unshifted, the lesions sit within
    +-0.07 of the centre, so a model-free centre prior scores pointing game 1.0 and the pointing game
    says nothing; rolled, the centre prior scores 0.54 and the maps have to find the lesion."""

    task = "multiclass"

    def __init__(self, split: str, n: int, size: int = 32, shift: int = 8, seed: int = 0):
        from medxai.data.synthetic import generate

        st = generate("skin-lesion", n, size=size, seed=0, split=split, balanced=True)
        x = torch.from_numpy(st.images).permute(0, 3, 1, 2).float() / 255
        m = torch.from_numpy(st.masks)
        d = torch.randint(-shift, shift + 1, (n, 2), generator=torch.Generator().manual_seed(seed)).tolist()
        self.x = torch.stack([torch.roll(x[i], tuple(d[i]), (1, 2)) for i in range(n)])
        self.masks = torch.stack([torch.roll(m[i], tuple(d[i]), (0, 1)) for i in range(n)])
        self.y = torch.from_numpy(st.labels)
        self.labels = st.labels

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": self.y[i]}


def _centre_prior(n: int, size: int) -> torch.Tensor:
    """A model-free control: a Gaussian bump (sigma size / 6) at the image centre, (n, size, size)."""
    r = torch.arange(size) - (size - 1) / 2
    g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * (size / 6) ** 2))
    return g.expand(n, size, size).contiguous()


def test_small_vit_learns_a_synthetic_study_and_its_maps_point_at_the_lesions():
    """A 2-block patch-4 ViT learns the rolled skin-lesion study (600 train, 12 epochs, CPU) and
    Chefer's maps point at the lesions, far better than the untrained model and a centre prior.

    Measured (model seeds 0-4; pointing game / energy over the 90 test images; mask area 0.17):
    accuracy 0.856-0.889; centre prior 0.544 / 0.360; chefer_lrp 0.73-0.91 / 0.59-0.77 (untrained
    0.13-0.28 / 0.11-0.15); chefer_generic 0.76-0.92 / 0.56-0.72 (untrained 0.40-0.58 / 0.15-0.19);
    first-block raw attention 0.83-0.93 / 0.57-0.70; rollout 0.86-0.93 / 0.39-0.43; last-block raw
    attention 0.58-0.77 / 0.31-0.42. The model learns the lesions; the last block's CLS attention shows
    them poorly (its energy is about the centre prior's), plausibly because it reads tokens that block 0
    has already mixed, so where it looks is not where the evidence was. On the unrolled study it
    varied as much (pointing game 0.47-0.91 over six runs of the current and the previous generator):
    the old ">= 0.75" for it held by the luck of one seed. It is held to "better than uniform, below
    Chefer LRP" here. Every threshold sits under the five-seed minimum; the test trains seed 0.
    """
    from medxai.metrics import energy_pointing_game, pointing_game
    from medxai.train import fit

    t0 = time.perf_counter()
    train, test = _Study("train", 600, seed=1), _Study("test", 90, seed=2)
    torch.manual_seed(0)
    model = M.create("vit-ti4", 3, 3, img_size=32, depth=2, embed_dim=64, num_heads=4)
    untrained = M.create("vit-ti4", 3, 3, img_size=32, depth=2, embed_dim=64, num_heads=4).eval()
    fit(model, train, None, {"task": "multiclass", "epochs": 12, "batch_size": 16, "lr": 1e-3, "scheduler": "cosine",
                             "warmup_epochs": 1, "device": "cpu", "monitor": "train_loss", "restore_best": False})
    model.eval()
    with torch.no_grad():
        acc = float((model(test.x).argmax(1) == test.y).float().mean())
    masks = test.masks
    area = float(masks.flatten(1).float().mean(1).mean())

    def score(maps):
        return (float(pointing_game(maps, masks).nanmean()), float(energy_pointing_game(maps, masks).nanmean()))

    scores = {}
    for key, method, kw in (("raw_attention", "raw_attention", {}), ("raw_attention@0", "raw_attention", {"layer": 0}),
                            ("rollout", "rollout", {}), ("chefer_generic", "chefer_generic", {}),
                            ("chefer_lrp", "chefer_lrp", {}), ("gradcam", "gradcam", {})):
        scores[key] = score(explain(model, test.x, method, target=test.y, **kw))
    untrained_scores = {m: score(explain(untrained, test.x, m, target=test.y))
                        for m in ("chefer_generic", "chefer_lrp")}
    centre = score(_centre_prior(len(test.y), 32))
    took = time.perf_counter() - t0
    print(f"\n[vit] rolled skin-lesion 32 px, 600 train: test accuracy {acc:.3f} (chance 0.33), {took:.1f} s; mask "
          f"area {area:.3f}; centre prior {centre}; untrained {untrained_scores}; (pointing game, energy): {scores}")
    assert acc >= 0.8, acc
    assert 0.4 <= centre[0] <= 0.7, centre  # the control is what the docstring says: the shift is in effect
    for method in ("chefer_generic", "chefer_lrp", "raw_attention@0"):
        pg, energy = scores[method]
        assert pg >= 0.7 and pg >= centre[0] + 0.15, (method, pg, centre)
        assert energy >= centre[1] + 0.15 and energy >= 2.5 * area, (method, energy, centre, area)
    for method in ("chefer_generic", "chefer_lrp"):  # training is what put the maps on the lesions
        assert scores[method][1] >= untrained_scores[method][1] + 0.3, (method, scores[method], untrained_scores)
    assert scores["rollout"][0] >= 0.75, scores["rollout"]
    raw_pg, raw_energy = scores["raw_attention"]  # the weak one: better than uniform, below Chefer LRP
    assert raw_pg >= 0.5 and raw_energy >= 1.5 * area and raw_energy < scores["chefer_lrp"][1], scores["raw_attention"]


def _peak_cpu_bytes(fn) -> int:
    """Peak of the CPU allocator's live bytes during ``fn()`` (torch.profiler memory events in time order)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    live = peak = 0
    for e in events:
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


@pytest.mark.parametrize("cls", [RawAttention, AttentionRollout, CheferGeneric, CheferLRP, GradCAM])
def test_peak_memory_grows_linearly_with_the_batch(cls):
    """Doubling the batch doubles the peak memory of explaining it (nothing of size B^2, no per-batch
    constant hidden in a loop): measured peaks at B = 2, 4, 8, 16 have ratios 2 within 5%."""
    explainer = cls(_vit(depth=3, size=32))
    peaks = [_peak_cpu_bytes(lambda b=b: explainer.attribute(_x(b, 32), torch.zeros(b, dtype=torch.long)))
             for b in (2, 4, 8, 16)]
    ratios = [peaks[i + 1] / peaks[i] for i in range(3)]
    assert all(1.9 <= r <= 2.1 for r in ratios), (peaks, ratios)
