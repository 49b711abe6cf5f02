"""LRP and DeepLIFT vs captum 0.9.0: time ratio and max abs difference of the maps.

Same model and inputs, run side by side in one process (interleaved, warm-up, median). The model
is a plain Sequential-style CNN (conv-ReLU-maxpool-conv-ReLU-avgpool-linear) that captum's LRP
supports (captum has no rule for Flatten, residual additions or concatenations). LRP rows: epsilon
on every layer (captum ``EpsilonRule``; pooling in captum with epsilon 1e-12, ours by the exact
z-rule) and gamma on the convolutions (bias-free convs: captum keeps the unmodified bias).
DeepLIFT: average pooling (captum's max-pool multipliers do not sum to the output change).
"""

from __future__ import annotations

import torch
from torch import nn

from benchmarks._harness import bare_rate, batch_like, count_flops, count_flops_fed, row, sync, timeit_pair
from medxai.explain import LRP, DeepLift

KIND = "explain_lrp"


class _Net(nn.Module):
    def __init__(self, width: int, pool: str, bias: bool, size: int) -> None:
        super().__init__()
        self.c1, self.r1 = nn.Conv2d(3, width, 3, padding=1, bias=bias), nn.ReLU()
        self.p1 = nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2)
        self.c2, self.r2, self.p2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=bias), nn.ReLU(), nn.AvgPool2d(2)
        self.fc = nn.Linear(2 * width * (size // 4) ** 2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.p2(self.r2(self.c2(self.p1(self.r1(self.c1(x)))))).flatten(1))


def _captum_lrp(m: nn.Module, x: torch.Tensor, t: torch.Tensor, conv: str) -> torch.Tensor:
    from captum.attr import LRP as CaptumLRP
    from captum.attr._utils.lrp_rules import EpsilonRule, GammaRule

    for layer in m.modules():
        if isinstance(layer, nn.Conv2d):
            layer.rule = GammaRule() if conv == "gamma" else EpsilonRule(epsilon=1e-6)
        elif isinstance(layer, nn.Linear):
            layer.rule = EpsilonRule(epsilon=1e-6)
        elif isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
            layer.rule = EpsilonRule(epsilon=1e-12)
    return CaptumLRP(m).attribute(x.clone().requires_grad_(True), target=t).detach()


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max())


def _pair(work: str, ours, peer, reps: int, tol: float, n: int, model: nn.Module, x: torch.Tensor) -> dict:
    """One row; FLOPs of one untimed call per side, bare rate (forward + backward) at the batch medxai feeds."""
    def wrap(f):
        def g():
            out = f()
            sync()
            return out
        return g

    res = timeit_pair({"medxai": wrap(ours), "captum": wrap(peer)}, repeats=reps, warmup=1)
    a, b = res["medxai"]["result"], res["captum"]["result"]
    scale = float(b.abs().max()) or 1.0
    flops, fed = count_flops_fed(model, ours)
    return row(work, "captum 0.9.0", res["medxai"]["median_s"], res["captum"]["median_s"], target=1.0,
               agreement=_maxdiff(a, b) / scale, agreement_kind="max_abs_diff / max|captum|", tol=1e-5, images=n,
               flops=flops, peer_flops=count_flops(peer), fed_batch=fed,
               bare_flops_per_s=bare_rate(model, batch_like(x, fed), backward=True, repeats=reps))


def run(quick: bool = False) -> dict:
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size, b, width, reps = (16, 2, 4, 1) if quick else (64, 16, 32, 3)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(b, 3, size, size, generator=g).to(dev)
    t = (torch.arange(b) % 5).to(dev)
    rows = []
    for conv, bias in (("epsilon", True), ("gamma", False)):
        torch.manual_seed(0)
        m = _Net(width, "max", bias, size).to(dev).eval()
        ours = LRP(m, rule=conv, stabilizer=1e-9)
        ours.composite = type(ours.composite)(first=None, conv=conv, dense="epsilon")
        rows.append(_pair(f"LRP {conv} (convs), epsilon (dense), {b}x3x{size}^2", lambda o=ours: o.attribute(x, t),
                          lambda m=m, c=conv: _captum_lrp(m, x, t, c), reps, 1e-5, b, m, x))
    torch.manual_seed(0)
    m = _Net(width, "avg", True, size).to(dev).eval()
    base = torch.full_like(x, 0.5)

    def peer():
        import warnings

        from captum.attr import DeepLift as CaptumDeepLift
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return CaptumDeepLift(m).attribute(x.clone().requires_grad_(True), baselines=base, target=t).detach()

    rows.append(_pair(f"DeepLIFT rescale, baseline 0.5, {b}x3x{size}^2",
                      lambda: DeepLift(m).attribute(x, t, baseline=base), peer, reps, 1e-5, b, m, x))
    return {"kind": KIND, "rows": rows,
            "notes": f"Model: conv-ReLU-pool-conv-ReLU-avgpool-linear, width {width}, random init (seed 0), eval; "
                     f"inputs U(0, 1); targets sample i -> class i mod 5; device {dev}; {reps} interleaved repeats "
                     "after a warm-up. agreement: max abs difference relative to captum's largest |value|."}
