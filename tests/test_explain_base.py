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
