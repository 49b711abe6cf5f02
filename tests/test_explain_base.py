"""The shared explainer contract and the batched masked-forward engine."""

import pytest
import torch
from torch import nn

from medxai.errors import InputError
from medxai.explain import perturbed_outputs, preserve_model, resolve_targets


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))


@pytest.mark.parametrize("batch_size", [1, 3, 7, None])
@pytest.mark.parametrize("targets", ["none", "vector", "matrix"])
def test_engine_equals_one_at_a_time(batch_size, targets):
    model = _model().eval()
    x = torch.rand(3, 3, 6, 6)
    masks = torch.rand(4, 1, 6, 6) > 0.5

    def make(si, pi):
        return x[si] * masks[pi]

    t = {"none": None, "vector": torch.tensor([0, 4, 2]),
         "matrix": torch.tensor([[0, 1], [4, 3], [2, 2]])}[targets]
    out = perturbed_outputs(model, x, 4, make, t, output="softmax", batch_size=batch_size)
    with torch.no_grad():
        full = torch.stack([torch.stack([torch.softmax(model(x[b:b + 1] * masks[p]), -1)[0]
                                         for p in range(4)]) for b in range(3)])
    if targets == "vector":
        full = full[torch.arange(3), :, t]
    elif targets == "matrix":
        full = torch.stack([full[b][:, t[b]] for b in range(3)])
    assert out.shape == full.shape
    torch.testing.assert_close(out, full, atol=1e-6, rtol=1e-5)


def test_preserve_model_restores_everything_on_error():
    model = _model().train()
    model[0].weight.grad = g = torch.ones_like(model[0].weight)
    model[5].weight.requires_grad_(False)
    n_hooks = len(model[2]._forward_hooks)
    with pytest.raises(RuntimeError), preserve_model(model):
        assert not model.training
        assert not any(p.requires_grad for p in model.parameters())
        model[2].register_forward_hook(lambda *a: None)
        model[0].weight.grad = None
        raise RuntimeError("midway")
    assert model.training and all(m.training for m in model.modules())
    assert model[0].weight.grad is g
    assert model[0].weight.requires_grad and not model[5].weight.requires_grad
    assert len(model[2]._forward_hooks) == n_hooks


def test_resolve_targets_ties_and_topk():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
    assert resolve_targets(logits, None).tolist() == [[1], [0]]
    assert resolve_targets(logits, None, top_k=3).tolist() == [[1, 2, 0], [0, 1, 2]]
    assert resolve_targets(logits, 3).tolist() == [[3], [3]]
    with pytest.raises(InputError):
        resolve_targets(logits, 4)
    with pytest.raises(InputError):
        resolve_targets(logits, None, top_k=5)


# ----------------------------------------------------------------------------- out-of-memory: halve and go on

class OOMAbove(nn.Module):
    """Raises the real GPU out-of-memory exception (``torch.OutOfMemoryError``, which
    ``torch.cuda.OutOfMemoryError`` is) when a forward gets more than ``limit`` images."""

    def __init__(self, inner: nn.Module, limit: int) -> None:
        super().__init__()
        self.inner, self.limit, self.sizes = inner, limit, []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected: {x.shape[0]} > {self.limit} images)")
        return self.inner(x)


def _oom_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("medxai") and r.levelname == "WARNING"
            and "out of memory" in r.getMessage()]


def test_oom_exception_types_are_the_real_ones():
    from medxai.explain.engine import OOM_ERRORS

    assert torch.OutOfMemoryError in OOM_ERRORS and issubclass(torch.cuda.OutOfMemoryError, OOM_ERRORS)


def test_engine_halves_chunks_on_out_of_memory(caplog):
    inner = _model().eval()
    x = torch.rand(3, 3, 6, 6)
    masks = torch.rand(7, 1, 6, 6) > 0.5
    t = torch.tensor([0, 4, 2])
    make = lambda si, pi: x[si] * masks[pi]
    ref = perturbed_outputs(inner, x, 7, make, t, output="softmax", batch_size=21)
    model = OOMAbove(inner, limit=5)
    with caplog.at_level("WARNING", logger="medxai"):
        out = perturbed_outputs(model, x, 7, make, t, output="softmax", batch_size=21)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    # 21 fails, 10 fails, 5 fits; the rest of the work continues at 5 (21 = 4 x 5 + 1)
    assert model.sizes == [21, 10, 5, 5, 5, 5, 1]
    msgs = _oom_warnings(caplog)
    assert len(msgs) == 2 and "21" in msgs[0] and "10" in msgs[0] and "5" in msgs[1]
    # a single image that does not fit: the error is not swallowed
    with pytest.raises(torch.OutOfMemoryError):
        perturbed_outputs(OOMAbove(inner, limit=0), x, 7, make, t, batch_size=4)


def test_explainers_and_gradient_chunks_adapt_to_out_of_memory(caplog):
    from medxai.explain import GradCAM, IntegratedGradients, Occlusion, Saliency, SmoothGrad

    inner = _model().eval()
    x = torch.rand(6, 3, 8, 8)
    t = torch.tensor([0, 1, 2, 3, 4, 0])
    cases = [
        (lambda m: IntegratedGradients(m, n_steps=8, internal_batch_size=48), 7),
        (lambda m: SmoothGrad(m, n_samples=5, noise_level=0.2, seed=3, internal_batch_size=30), 4),
        (lambda m: Saliency(m), 2),
        (lambda m: GradCAM(m, layer="inner.0"), 1),
        (lambda m: Occlusion(m, window=4, stride=2, batch_size=40), 9),
    ]
    for build, limit in cases:
        ref = build(OOMAbove(inner, 10**6)).attribute(x, t)
        model = OOMAbove(inner, limit)
        explainer = build(model)
        caplog.clear()
        with caplog.at_level("WARNING", logger="medxai"):
            out = explainer.attribute(x, t)
        name = type(explainer).__name__
        torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5, msg=name)
        assert max(model.sizes) > limit and _oom_warnings(caplog), name  # it did run out of memory, and said so
        assert all(p.requires_grad and p.grad is None for p in model.parameters()), name  # restored
        if isinstance(explainer, (IntegratedGradients, SmoothGrad)):
            # the size that fitted is kept: a second call runs out of memory no more
            model.sizes.clear()
            caplog.clear()
            with caplog.at_level("WARNING", logger="medxai"):
                again = explainer.attribute(x, t)
            torch.testing.assert_close(again, ref, atol=1e-6, rtol=1e-5)
            assert max(model.sizes) <= limit and not _oom_warnings(caplog), name


def test_cpu_model_calls_are_cache_sized_by_default():
    """On CPU the engine and the gradient methods call the model on at most CPU_MAX_BATCH images
    and CPU_CHUNK_BYTES of input per call (a budget-sized batch of thousands of images ran 2x slower),
    unless ``batch_size`` / ``internal_batch_size`` says otherwise; the outputs do not change."""
    from medxai.explain import IntegratedGradients
    from medxai.explain.engine import CPU_BATCH_PIXELS, CPU_CHUNK_BYTES, CPU_MAX_BATCH, model_batch_for

    sizes: list[int] = []
    model = _model().eval()
    model.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    small = torch.rand(5, 3, 8, 8)  # 768 B per image: the count cap binds
    big = torch.rand(1, 3, 512, 512)  # 3 MiB per image: the byte cap binds (1 image per call)
    assert model_batch_for(small) == CPU_MAX_BATCH == 64
    assert CPU_CHUNK_BYTES // (1 * 128 * 128 * 4) == 64  # one channel at 128 px: the byte cap allows 64 ...
    assert model_batch_for(torch.rand(1, 1, 128, 128)) == CPU_BATCH_PIXELS // (128 * 128) == 16  # ... positions cap 16
    assert model_batch_for(torch.rand(1, 3, 256, 256)) == min(CPU_CHUNK_BYTES // (3 * 256 * 256 * 4),
                                                            CPU_BATCH_PIXELS // (256 * 256)) == 4
    assert model_batch_for(torch.rand(1, 1, 32, 64, 64)) == CPU_CHUNK_BYTES // (32 * 64 * 64 * 4) == 8  # volumes: bytes
    assert model_batch_for(big) == 1

    out = perturbed_outputs(model, small, 40, lambda si, pi: small[si] * (pi[:, None, None, None] % 3 > 0), None)
    assert sizes == [64, 64, 64, 8]  # 200 perturbed images
    sizes.clear()
    ref = perturbed_outputs(model, small, 40, lambda si, pi: small[si] * (pi[:, None, None, None] % 3 > 0), None,
                            batch_size=200)
    assert sizes == [200]
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)

    sizes.clear()
    IntegratedGradients(model, n_steps=30).attribute(small, torch.tensor([0, 1, 2, 3, 4]))  # 150 path points
    assert sizes == [1, 64, 64, 22], sizes  # a one-image probe of the autograd memory, then the path
    sizes.clear()
    IntegratedGradients(model, n_steps=30, internal_batch_size=150).attribute(small, torch.tensor([0, 1, 2, 3, 4]))
    assert sizes == [150]


def test_input_buffer_is_channels_last_on_cpu_only_for_convolutional_models():
    """NHWC helps oneDNN convolutions but costs ~3x to fill: default only for models with a Conv2d."""
    from medxai.explain import Lime
    from medxai.explain.engine import InputBuffer

    x = torch.rand(2, 3, 16, 16)
    conv, linear = _model().eval(), nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 5)).eval()
    assert InputBuffer(x, None, conv)(4).is_contiguous(memory_format=torch.channels_last)
    assert InputBuffer(x, None, linear)(4).is_contiguous()
    assert not InputBuffer(x, None, linear)(4).is_contiguous(memory_format=torch.channels_last)
    assert InputBuffer(x, True, linear)(4).is_contiguous(memory_format=torch.channels_last)
    assert InputBuffer(x, False, conv)(4).is_contiguous()
    seen: list[bool] = []
    linear[0].register_forward_pre_hook(
        lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    segs = torch.arange(16).repeat_interleave(16).reshape(1, 16, 16).expand(2, -1, -1) // 64  # 4 stripes
    w_default = Lime(linear, num_samples=30).attribute(x, torch.tensor([0, 3]), segments=segs)
    assert seen and not any(seen)
    w_nhwc = Lime(linear, num_samples=30, channels_last=True).attribute(x, torch.tensor([0, 3]), segments=segs)
    assert any(seen)
    torch.testing.assert_close(w_default, w_nhwc, atol=1e-5, rtol=1e-4)
