"""Explanations of volumes (B, C, D, H, W): anchors (MONAI's 3-D GradCAM, captum's IG and Occlusion),
batched == per-volume, written references for SmoothGrad, LIME and RISE, and IG's peak memory."""

import numpy as np
import pytest
import torch
from torch import nn

from medxai.errors import InputError
from medxai.explain import (
    RISE,
    GradCAM,
    GradCAMPlusPlus,
    InputXGradient,
    IntegratedGradients,
    Lime,
    Occlusion,
    Saliency,
    SmoothGrad,
)
from medxai.explain.lime import superpixels
from medxai.explain.postprocess import postprocess
from medxai.explain.rise import RiseMasks
from medxai.models import create


def _net(k: int = 3, width: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = create("small-cnn3d", k, 1, width=width, normalize="none").eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm3d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    return m


def _vols(b: int = 3, shape=(8, 16, 16), seed: int = 1) -> torch.Tensor:
    return torch.rand(b, 1, *shape, generator=torch.Generator().manual_seed(seed))


def test_attribute_refuses_volumes_where_not_allowed_and_names_the_shapes():
    m = _net()
    with pytest.raises(InputError, match=r"4 dimensions \(B, C, H, W\) or 5 dimensions \(B, C, D, H, W\)"):
        Saliency(m).attribute(torch.rand(8, 16, 16), 0)
    from medxai.explain.lrp import LRP

    with pytest.raises(InputError, match=r"4 dimensions \(B, C, H, W\), got shape"):
        LRP(m).attribute(_vols(1), 0)


@pytest.mark.parametrize("cls", [GradCAM, GradCAMPlusPlus])
def test_gradcam_3d_shape_and_monai(cls):
    """3-D Grad-CAM equals MONAI's ``monai.visualize.GradCAM`` (raw maps: MONAI's postprocessing
    replaced by the identity, as its default normaliser inverts the map; trilinear,
    align_corners=False in both), per sample with an int class index (MONAI's class_score sums
    logits[:, idx] over the batch, so a per-sample target must be one call per sample)."""
    m = _net()
    x = _vols(3)
    t = torch.tensor([0, 2, 1])
    ours = cls(m, layer="features.block3").attribute(x, t)
    assert ours.shape == (3, 1, 8, 16, 16)
    if cls is not GradCAM:
        torch.testing.assert_close(ours, _gradcampp_reference(m, x, t), atol=1e-6, rtol=1e-5)
        return
    vis = pytest.importorskip("monai.visualize")
    cam = vis.GradCAM(nn_module=m, target_layers="features.block3", postprocessing=lambda v: v)
    for i in range(3):
        theirs = cam(x[i:i + 1], class_idx=int(t[i]))
        torch.testing.assert_close(ours[i:i + 1], theirs.detach(), atol=1e-5, rtol=1e-5)


def _gradcampp_reference(m, x, t):
    """Grad-CAM++ (Chattopadhyay 2018, eq. 19) written on the 3-D activations A (B, K, d, h, w):
    alpha = g^2 / (2 g^2 + sum_abc A g^3), w_k = sum alpha relu(g), relu(sum_k w_k A), trilinear."""
    store = {}
    h = m.features.block3.register_forward_hook(lambda _m, _i, o: store.__setitem__("A", o))
    try:
        out = m(x)
    finally:
        h.remove()
    a = store["A"]
    (g,) = torch.autograd.grad(out.gather(1, t[:, None]).sum(), a)
    a = a.detach()
    g2, g3 = g**2, g**3
    alpha = g2 / (2 * g2 + a.sum((2, 3, 4), keepdim=True) * g3 + 1e-6)
    alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
    w = (alpha * g.clamp(min=0)).sum((2, 3, 4), keepdim=True)
    cam = (w * a).sum(1, keepdim=True).clamp(min=0)
    return torch.nn.functional.interpolate(cam, size=x.shape[2:], mode="trilinear", align_corners=False)


def test_ig_3d_equals_captum():
    captum_attr = pytest.importorskip("captum.attr")
    m = _net()
    x = _vols(2)
    t = torch.tensor([1, 2])
    ours, delta = IntegratedGradients(m, n_steps=8, method="gausslegendre").attribute(
        x, t, return_convergence_delta=True)
    theirs = captum_attr.IntegratedGradients(m).attribute(x, target=t, n_steps=8, method="gausslegendre",
                                                         baselines=torch.zeros_like(x))
    assert ours.shape == x.shape
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-4)
    # completeness: sum IG = f(x) - f(0) up to the quadrature error, reported as delta
    with torch.no_grad():
        gap = (m(x) - m(torch.zeros_like(x))).gather(1, t[:, None])[:, 0]
    torch.testing.assert_close(ours.flatten(1).sum(1) - gap, delta, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("window", "stride"), [((4, 4, 4), (2, 2, 2)), ((1, 3, 5, 4), (1, 2, 3, 4))])
def test_occlusion_3d_equals_captum(window, stride):
    captum_attr = pytest.importorskip("captum.attr")
    m = _net()
    x = _vols(2)
    t = torch.tensor([0, 2])
    ours = Occlusion(m, window=window, stride=stride, baseline=0.25, batch_size=23).attribute(x, t)
    win = window if len(window) == 4 else (1, *window)
    st = stride if len(stride) == 4 else (1, *stride)
    theirs = captum_attr.Occlusion(m).attribute(x, sliding_window_shapes=win, strides=st, baselines=0.25,
                                                target=t, perturbations_per_eval=50)
    assert ours.shape == x.shape
    torch.testing.assert_close(ours, theirs, atol=2e-6, rtol=1e-4)


def _methods(m):
    return {
        "saliency": (Saliency(m), {}),
        "input_x_gradient": (InputXGradient(m), {}),
        "ig": (IntegratedGradients(m, n_steps=4, internal_batch_size=3), {}),
        "smoothgrad": (SmoothGrad(m, n_samples=3, sigma=0.1), {}),
        "gradcam": (GradCAM(m, layer="features.block3"), {}),
        "occlusion": (Occlusion(m, window=(4, 8, 8), stride=(4, 8, 8), batch_size=5), {}),
        "rise": (RISE(m, n_masks=24, s=4, output="softmax", batch_size=7), {}),
        # LIME draws one perturbation matrix per call: give it, so a volume's draws are its own
        "lime": (Lime(m, num_samples=20, batch_size=9, segmentation_params={"n_segments": 8}),
                 {"perturbations": torch.rand(20, 40, generator=torch.Generator().manual_seed(2)) < 0.5}),
    }


@pytest.mark.parametrize("name", ["saliency", "input_x_gradient", "ig", "smoothgrad", "gradcam", "occlusion",
                                  "rise", "lime"])
def test_batched_equals_per_volume(name):
    m = _net()
    x = _vols(3)
    t = torch.tensor([2, 0, 1])
    method, kw = _methods(m)[name]
    if name == "smoothgrad":  # a sample's noise must not depend on the batch: give it
        noise = torch.randn(3, *x.shape, generator=torch.Generator().manual_seed(5)) * 0.1
        whole = method.attribute(x, t, noise=noise)
        parts = [method.attribute(x[i:i + 1], t[i:i + 1], noise=noise[:, i:i + 1]) for i in range(3)]
    else:
        whole = method.attribute(x, t, **kw)
        parts = [method.attribute(x[i:i + 1], t[i:i + 1], **kw) for i in range(3)]
    assert whole.shape[0] == 3 and tuple(whole.shape[-3:]) == (8, 16, 16)
    torch.testing.assert_close(whole, torch.cat(parts), atol=1e-6, rtol=1e-5)


def test_smoothgrad_3d_equals_written_mean_of_gradients():
    """SmoothGrad (Smilkov 2017, eq. 1): mean over noisy copies of d f_c / d x at x + eps_k."""
    m = _net()
    x = _vols(2)
    t = torch.tensor([1, 0])
    noise = torch.randn(4, *x.shape, generator=torch.Generator().manual_seed(3)) * 0.15
    ours = SmoothGrad(m, n_samples=4).attribute(x, t, noise=noise)
    ref = torch.zeros_like(x)
    for k in range(4):
        xk = (x + noise[k]).requires_grad_(True)
        m(xk).gather(1, t[:, None]).sum().backward()
        ref += xk.grad / 4
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)


def test_lime_supervoxels_are_3d_slic_and_outputs_match_a_loop():
    seg_mod = pytest.importorskip("skimage.segmentation")
    m = _net()
    x = _vols(2)
    seg = superpixels(x, n_segments=8)
    assert seg.shape == (2, 8, 16, 16)
    ref = seg_mod.slic(x[0, 0].double().numpy(), n_segments=8, compactness=0.1, sigma=1.0, start_label=0,
                       channel_axis=None)
    assert np.array_equal(np.unique(ref, return_inverse=True)[1].reshape(ref.shape), seg[0].numpy())
    lime = Lime(m, num_samples=12, hide_color=0.0, output="logit", segmentation_params={"n_segments": 8})
    res = lime.explain_superpixels(x, torch.tensor([1, 2]))
    for b in range(2):  # the perturbed volumes, built voxel by voxel from z, through the model one by one
        for n in (0, 5, 11):
            keep = res.perturbations[b, n][res.segments[b]].to(x.dtype)
            with torch.no_grad():
                y = m((x[b] * keep)[None])[0, res.targets[b, 0]]
            torch.testing.assert_close(res.outputs[b, n, 0], y, atol=1e-5, rtol=1e-5)
    pm = lime.attribute(x, torch.tensor([1, 2]))
    assert pm.shape == (2, 1, 8, 16, 16)
    torch.testing.assert_close(pm[:, 0], res.weights[:, 0].gather(1, res.segments.flatten(1)).view(2, 8, 16, 16))


def test_rise_3d_equals_written_sum():
    """RISE (Petsiuk 2018, eq. 6): S = 1 / (N p) sum_i f(x * M_i) M_i with trilinear, shifted 3-D masks."""
    m = _net()
    x = _vols(2)
    n, s, p = 16, 3, 0.5
    masks = RiseMasks(n, (8, 16, 16), s=s, p=p, seed=4)
    full = masks[torch.arange(n)]
    assert full.shape == (n, 8, 16, 16) and float(full.min()) >= 0 and float(full.max()) <= 1
    # mask i is the trilinear upsampling of its s^3 grid cropped at its shift
    up = torch.nn.functional.interpolate(masks.grids, size=masks.up, mode="trilinear", align_corners=False)
    for i in (0, 7):
        d, h, w = masks.shifts[i].tolist()
        torch.testing.assert_close(full[i], up[i, 0, d:d + 8, h:h + 16, w:w + 16].clamp(0, 1))
    ours = RISE(m, n_masks=n, s=s, p=p, seed=4, output="softmax").attribute(x, torch.tensor([0, 1]))
    with torch.no_grad():
        probs = torch.stack([torch.softmax(m(x * full[i]), -1) for i in range(n)], 1)  # (B, N, K)
    ref = torch.stack([(probs[b, :, t, None, None, None] * full).sum(0) for b, t in ((0, 0), (1, 1))])
    torch.testing.assert_close(ours[:, 0], ref / (n * p), atol=1e-6, rtol=1e-5)


def test_postprocess_volumes():
    maps = torch.randn(2, 3, 4, 4, 4)
    out = postprocess(maps, reduce_channels="abs_sum", upsample="bilinear", size=(8, 8, 8), normalize="minmax")
    assert out.shape == (2, 1, 8, 8, 8)
    ref = torch.nn.functional.interpolate(maps.abs().sum(1, keepdim=True), size=(8, 8, 8), mode="trilinear",
                                          align_corners=False)
    lo, hi = ref.flatten(1).amin(1), ref.flatten(1).amax(1)
    torch.testing.assert_close(out, (ref - lo.view(2, 1, 1, 1, 1)) / (hi - lo).view(2, 1, 1, 1, 1))
    with pytest.raises(InputError, match="spatial entries"):
        postprocess(maps, upsample="bilinear", size=(8, 8), spatial_dims=3)


def _peak_cpu_bytes(fn) -> int:
    """Peak of the net CPU bytes allocated while ``fn`` runs, from the profiler's allocator memory
    events ([memory] events: +bytes on allocation, -bytes on free, cumulated in time order)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    ev = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    cur = peak = 0
    for _, nb in ev:
        cur += nb
        peak = max(peak, cur)
    return peak


def test_ig_96_cubed_peak_memory_stays_within_the_budget():
    """IG of a 96^3 volume: path points run in chunks sized by ``memory_budget`` against the
    probed peak of one image's forward + backward, so the call's peak (profiler memory events,
    CPU allocator: net bytes allocated during the call) stays within the budget plus the
    volume-sized buffers IG keeps (x, baseline, difference, path point, gradient, accumulator:
    8 volumes allowed); all 6 steps at once (internal_batch_size=6) go far above it."""
    from medxai.explain.gradient import peak_bytes_per_image

    torch.manual_seed(0)
    m = create("small-cnn3d", 2, 1, width=2).eval()
    x = torch.rand(1, 1, 96, 96, 96)
    vol = x.numel() * 4
    budget = int(1.5 * peak_bytes_per_image(m, x))  # one path point per chunk
    ig = IntegratedGradients(m, n_steps=6, method="riemann_middle", memory_budget=budget)
    ig.attribute(x[:, :, :8, :8, :8], target=1)  # (another shape: the probe runs again below)
    assert ig._chunk(m, x) == 1  # the probe, outside the profiled call (profilers do not nest)
    peak = _peak_cpu_bytes(lambda: ig.attribute(x, target=1))
    assert peak <= budget + 8 * vol, (peak / 2**20, budget / 2**20)
    whole = IntegratedGradients(m, n_steps=6, method="riemann_middle", internal_batch_size=6)
    peak_whole = _peak_cpu_bytes(lambda: whole.attribute(x, target=1))
    assert peak_whole > 3 * budget, (peak_whole / 2**20, budget / 2**20)
