"""Layer-wise relevance propagation for CNNs (Bach et al. 2015; Montavon et al. 2019, "Layer-wise
relevance propagation: an overview", in *Explainable AI*, LNCS 11700): rules, composites and a
BatchNorm canonizer, all as modified gradients ("gradient trick", Montavon 2019 sec. 10.2.2).

How the backward carries relevance: the gradient ``c`` at every tensor ``a`` is relevance per unit
activation, ``R(a) = a * c``. Forward hooks on ``Linear`` / ``Conv1-3d`` / ``BatchNorm`` replace the
layer's output ``z`` by a tensor of the same VALUE whose gradient implements the layer's rule:
``c_in = rho(W)^T (R_out / stab(z_rho))`` with ``R_out = z * c_out``. Every other op keeps its
ordinary gradient, which is already an LRP rule under this convention: ReLU, max-pooling, dropout,
flatten and concatenation pass relevance unchanged; average pooling and residual additions
``y = a + b`` split it by the z-rule (``R_a = a / y * R_y``) without any epsilon, so relevance flows
through skip connections, DenseNet concatenations and any graph autograd handles. Other elementwise
activations (ELU, SiLU, GELU, tanh, sigmoid, ...) get a pass-through hook (``R_in = R_out``, as
zennit's ``Pass``). Multiplicative gates (squeeze-excitation) and attention are not LRP rules here:
use ``chefer_lrp`` for ViTs.

The first layer (the first Linear / Conv called in the forward) must take the image itself, or the
output of the model's ``Normalize`` layer; its rule reads relevance directly at its input (a zero
"probe" tensor), which allows the non-gradient input rules (z^B, flat). ``Normalize`` is
elementwise and bijective: a normalised input's relevance is its pixel's relevance (pass-through,
as zennit). The z^B bounds are pixel values ``low`` = 0 and ``high`` = 1 mapped through the
model's ``Normalize`` (per channel).

Relevance is initialised as the target logit (``R = f_c(x)`` at the target output, 0 elsewhere),
as captum's ``LRP``; ``output`` other than "logit" is refused. Stabiliser: ``stab(z) = z + eps *
sign(z)`` with sign(0) = +1 (zennit / captum); exact zeros of the denominator with eps = 0 give 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from medxai.errors import ConfigError, ModelError
from medxai.explain.base import Attribution, TargetSpec
from medxai.explain.engine import for_chunks
from medxai.explain.registry import REGISTRY
from medxai.models import Normalize, VisionTransformer

__all__ = ["LRP", "lrp_hooks", "merge_batchnorm"]

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
LINEARS = (nn.Linear, *CONVS)
#: elementwise activations that are not positively homogeneous: relevance passes through them
PASS_ACTIVATIONS = (nn.ELU, nn.SiLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.ReLU6, nn.Hardswish,
                    nn.Mish, nn.CELU, nn.SELU, nn.Hardtanh)
RULES = ("zero", "epsilon", "gamma", "alpha_beta", "alpha1_beta0", "zbox", "flat")
#: rules that read relevance at the layer's input directly: only valid on the first layer
INPUT_RULES = ("zbox", "flat")


@dataclass(frozen=True)
class Rule:
    """One LRP rule (Montavon 2019): ``kind`` in ``RULES``; ``eps`` the stabiliser (epsilon rule: eq.
    for LRP-epsilon; other rules: numerical stabiliser only), ``gamma`` (LRP-gamma), ``alpha``/``beta``
    (LRP-alpha-beta, alpha - beta = 1; ``alpha1_beta0`` = z+ rule), ``low``/``high`` pixel bounds (z^B)."""

    kind: str = "epsilon"
    eps: float = 1e-6
    gamma: float = 0.25
    alpha: float = 2.0
    beta: float = 1.0
    low: float = 0.0
    high: float = 1.0


@dataclass(frozen=True)
class Composite:
    """Rules by layer kind: ``first`` (the first Linear / Conv), ``conv``, ``dense`` (Linear); an
    unmerged BatchNorm always gets the epsilon rule as its own linear layer (captum's default)."""

    first: str | None
    conv: str
    dense: str


#: zennit 0.5.1's composites of the same names (``zennit.composites``)
COMPOSITES = {
    "epsilon_plus_flat": Composite(first="flat", conv="alpha1_beta0", dense="epsilon"),
    "epsilon_gamma_box": Composite(first="zbox", conv="gamma", dense="epsilon"),
    "epsilon_alpha2_beta1": Composite(first=None, conv="alpha_beta", dense="epsilon"),
    "epsilon_plus": Composite(first=None, conv="alpha1_beta0", dense="epsilon"),
}


# --------------------------------------------------------------------------- rules as gradients

def _stab(d: torch.Tensor, eps: float) -> torch.Tensor:
    return d + eps * torch.where(d >= 0, 1.0, -1.0).to(d.dtype)


def _ratio(num: torch.Tensor, den: torch.Tensor, eps: float) -> torch.Tensor:
    """(num / stab(den)), detached; 0 where the stabilised denominator is exactly 0."""
    d = _stab(den, eps).detach()
    zero = d == 0
    return torch.where(zero, 0.0, num.detach() / torch.where(zero, 1.0, d)).to(num.dtype)


Affine = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def _affine(m: nn.Module, a: torch.Tensor) -> tuple[Affine, torch.Tensor, torch.Tensor | None]:
    """The layer as ``fwd(u, w, b)`` with its weight and bias (BatchNorm: eval-mode scale and shift)."""
    if isinstance(m, nn.Linear):
        return F.linear, m.weight, m.bias
    if isinstance(m, CONVS):
        return m._conv_forward, m.weight, m.bias
    if m.running_var is None:
        raise ModelError(f"LRP needs BatchNorm running statistics; {m} has track_running_stats=False")
    scale = torch.rsqrt(m.running_var + m.eps)
    if m.weight is not None:
        scale = scale * m.weight
    shift = -m.running_mean * scale + (m.bias if m.bias is not None else 0)
    view = (1, -1) + (1,) * (a.ndim - 2)

    def fwd(u: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        out = u * w.view(view)
        return out if b is None else out + b.view(view)

    return fwd, scale, shift


def _signed(w: torch.Tensor | None, pos: bool, gamma: float) -> torch.Tensor | None:
    """``w + gamma w+`` (pos) or ``w + gamma w-`` (LRP-gamma's weights; None stays None)."""
    if w is None:
        return None
    return w + gamma * (w.clamp(min=0) if pos else w.clamp(max=0))


def _rule_term(rule: Rule, fwd: Affine, w: torch.Tensor, b: torch.Tensor | None, a: torch.Tensor,
               z: torch.Tensor, feed: Callable[[torch.Tensor], torch.Tensor],
               bounds: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """A tensor shaped like ``z`` whose gradient through ``feed`` is the rule (Montavon 2019, eqs. for
    LRP-0/epsilon, gamma, alpha-beta, z^B, flat), given ``R_out = z * grad``; signed inputs are split
    into a+ and a- as zennit 0.5.1 does (the paper's rules assume a >= 0)."""
    k, eps = rule.kind, rule.eps
    if k in ("zero", "epsilon"):
        base = z if bounds is None else fwd(feed(a), w, None)  # hidden layer: z's own graph gives W^T
        return base * _ratio(z, z, 0.0 if k == "zero" else eps)
    ap, an = a.clamp(min=0), a.clamp(max=0)
    with torch.no_grad():
        ap_d, an_d = ap.detach(), an.detach()
    if k == "gamma":
        wp, wn = _signed(w, True, rule.gamma), _signed(w, False, rule.gamma)
        bp, bn = _signed(b, True, rule.gamma), _signed(b, False, rule.gamma)
        with torch.no_grad():
            dp = fwd(ap_d, wp, bp) + fwd(an_d, wn, None)  # favours positive contributions (z > 0)
            dn = fwd(ap_d, wn, bn) + fwd(an_d, wp, None)  # favours negative contributions (z < 0)
        tp = fwd(feed(ap), wp, None) + fwd(feed(an), wn, None)
        tn = fwd(feed(ap), wn, None) + fwd(feed(an), wp, None)
        return tp * _ratio(z * (z > 0), dp, eps) + tn * _ratio(z * (z < 0), dn, eps)
    if k in ("alpha_beta", "alpha1_beta0"):
        alpha, beta = (1.0, 0.0) if k == "alpha1_beta0" else (rule.alpha, rule.beta)
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        bp, bn = (None, None) if b is None else (b.clamp(min=0), b.clamp(max=0))
        with torch.no_grad():
            dp = fwd(ap_d, wp, bp) + fwd(an_d, wn, None)
        term = alpha * (fwd(feed(ap), wp, None) + fwd(feed(an), wn, None)) * _ratio(z, dp, eps)
        if beta:
            with torch.no_grad():
                dn = fwd(ap_d, wn, bn) + fwd(an_d, wp, None)
            term = term - beta * (fwd(feed(ap), wn, None) + fwd(feed(an), wp, None)) * _ratio(z, dn, eps)
        return term
    if k == "zbox":
        lo, hi = bounds
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        with torch.no_grad():  # the bias cancels: (z + b) - (W+ l + b+) - (W- h + b-)
            den = fwd(a.detach(), w, None) - fwd(lo, wp, None) - fwd(hi, wn, None)
        return (fwd(feed(a), w, None) - fwd(feed(lo), wp, None) - fwd(feed(hi), wn, None)) * _ratio(z, den, eps)
    # flat: relevance shared equally over each output's receptive field
    ones, w1 = torch.ones_like(a), torch.ones_like(w)
    with torch.no_grad():
        den = fwd(ones, w1, None)
    return fwd(feed(ones), w1, None) * _ratio(z, den, eps)


def _same_value(value: torch.Tensor, term: torch.Tensor) -> torch.Tensor:
    """``value`` in the forward, the gradient of ``term`` in the backward."""
    return value.detach() + (term - term.detach())


# --------------------------------------------------------------------------- hooks

@contextmanager
def out_of_place(model: nn.Module) -> Iterator[None]:
    """Within the block every module with an ``inplace`` flag runs out of place (a hook must see the
    activation's input intact); the flags are restored on exit, also on error."""
    flags = [(m, m.inplace) for m in model.modules() if isinstance(getattr(m, "inplace", None), bool)]
    try:
        for m, _ in flags:
            m.inplace = False
        yield
    finally:
        for m, v in flags:
            m.inplace = v


class _State:
    """One explaining forward: the image, the Normalize output seen, the first layer's probe."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x
        self.norm: tuple[nn.Module, torch.Tensor] | None = None
        self.probe: torch.Tensor | None = None


def _is_view_of(a: torch.Tensor, t: torch.Tensor) -> bool:
    return a.data_ptr() == t.data_ptr() and a.numel() == t.numel()


def _first_input(st: _State, a: torch.Tensor, rule: Rule) -> tuple[Callable, tuple | None]:
    """Create the probe at the first layer's input; return ``feed`` and the z^B bounds there."""
    if st.norm is not None and _is_view_of(a, st.norm[1]):
        norm = st.norm[0]
        lo = norm(torch.full_like(st.x, rule.low)).reshape(a.shape)
        hi = norm(torch.full_like(st.x, rule.high)).reshape(a.shape)
    elif _is_view_of(a, st.x):
        lo, hi = torch.full_like(a, rule.low), torch.full_like(a, rule.high)
    else:
        raise ConfigError("LRP: the first Linear/Conv layer must take the image or the Normalize layer's output "
                          "as input (layers or ops before it are not supported)")
    st.probe = torch.zeros_like(a, requires_grad=True)
    probe = st.probe
    return (lambda t: probe * t.detach()), (lo.detach(), hi.detach())


@contextmanager
def lrp_hooks(model: nn.Module, rule_for: Callable[[nn.Module, bool], Rule], x: torch.Tensor,
              skip: set[nn.Module] | frozenset = frozenset()) -> Iterator[_State]:
    """Within the block every forward of ``model`` at ``x`` builds the LRP backward: Linear / Conv /
    BatchNorm layers (not in ``skip``) follow ``rule_for(module, is_first)``; non-homogeneous
    activations pass relevance through. The returned state's ``probe`` (created by the first layer)
    receives the input relevance as its gradient. Hooks are removed on exit, also on error."""
    st = _State(x)
    stack = ExitStack()

    def layer_hook(m: nn.Module, inp: tuple, out: torch.Tensor) -> torch.Tensor:
        a = inp[0]
        first = st.probe is None and isinstance(m, LINEARS)
        rule = rule_for(m, first)
        if first:
            feed, bounds = _first_input(st, a, rule)
        else:
            if rule.kind in INPUT_RULES:
                raise ConfigError(f"LRP rule {rule.kind!r} is an input-layer rule; it cannot be used on {m}")
            feed, bounds = (lambda t: t), None
        fwd, w, b = _affine(m, a)
        return _same_value(out, _rule_term(rule, fwd, w, b, a, out, feed, bounds))

    def pass_hook(_m: nn.Module, inp: tuple, out: torch.Tensor) -> torch.Tensor:
        z = inp[0]
        return _same_value(out, z * _ratio(out, z, 0.0))  # R_in = z * (y / z) * c = R_out

    def norm_hook(m: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        if st.norm is None:
            st.norm = (m, out)

    handles = []
    try:
        stack.enter_context(out_of_place(model))
        for m in model.modules():
            if isinstance(m, Normalize):
                handles.append(m.register_forward_hook(norm_hook))
            elif (isinstance(m, LINEARS) or isinstance(m, _BatchNorm)) and m not in skip:
                handles.append(m.register_forward_hook(layer_hook))
            elif isinstance(m, PASS_ACTIVATIONS):
                handles.append(m.register_forward_hook(pass_hook))
        yield st
    finally:
        for h in handles:
            h.remove()
        stack.close()


# --------------------------------------------------------------------------- BatchNorm canonizer

def merge_pairs(model: nn.Module, x: torch.Tensor) -> tuple[list[tuple[nn.Module, _BatchNorm]], torch.Tensor]:
    """One no-grad forward at ``x``: the (Linear/Conv, BatchNorm) pairs where the BatchNorm's input is
    exactly that layer's output (each module called once); returns (pairs, logits)."""
    made: dict[int, nn.Module] = {}
    keep: list[torch.Tensor] = []
    found: dict[nn.Module, list[nn.Module | None]] = {}
    calls: dict[nn.Module, int] = {}

    def lin_hook(m: nn.Module, _i: tuple, out: torch.Tensor) -> None:
        calls[m] = calls.get(m, 0) + 1
        made[id(out)] = m
        keep.append(out)

    def bn_hook(m: nn.Module, inp: tuple, _o: torch.Tensor) -> None:
        found.setdefault(m, []).append(made.get(id(inp[0])))

    handles = [m.register_forward_hook(lin_hook) for m in model.modules() if isinstance(m, LINEARS)]
    handles += [m.register_forward_hook(bn_hook) for m in model.modules() if isinstance(m, _BatchNorm)]
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in handles:
            h.remove()
    pairs = []
    used: set[nn.Module] = set()
    for bn, producers in found.items():
        lin = producers[0]
        if (len(producers) == 1 and lin is not None and calls.get(lin) == 1 and lin not in used
                and bn.running_var is not None):
            pairs.append((lin, bn))
            used.add(lin)
    return pairs, logits


@contextmanager
def merge_batchnorm(pairs: list[tuple[nn.Module, _BatchNorm]]) -> Iterator[set[nn.Module]]:
    """Fold each BatchNorm (eval statistics) into the Linear/Conv before it (zennit's
    ``MergeBatchNorm``): ``W' = W s``, ``b' = (b - mu) s + beta`` with ``s = gamma / sqrt(var + eps)``,
    and the BatchNorm set to the exact identity (weight 1, bias 0, mean 0, var 1 and eps 0: zennit
    0.5.1 keeps eps there, which scales its canonized outputs by (1 + eps)^-1/2 per layer). Every
    changed tensor (and a bias added where there was none) is restored bitwise on exit, also on
    error. Yields the set of merged BatchNorms."""
    saved: list[tuple] = []
    try:
        with torch.no_grad():
            for lin, bn in pairs:
                _, s, t = _affine(bn, lin.weight)
                s, t = s.clone(), t.clone()
                saved.append((lin, bn, lin.weight.clone(), None if lin.bias is None else lin.bias.clone(),
                              [p.clone() for p in _bn_tensors(bn)], bn.eps))
                lin.weight.mul_(s.view(-1, *([1] * (lin.weight.ndim - 1))))
                new_b = t if lin.bias is None else lin.bias * s + t
                if lin.bias is None:
                    lin.bias = nn.Parameter(new_b, requires_grad=False)
                else:
                    lin.bias.copy_(new_b)
                for p, v in zip(_bn_tensors(bn), (1.0, 0.0, 0.0, 1.0), strict=True):
                    p.fill_(v)
                bn.eps = 0.0
        yield {bn for _, bn in pairs}
    finally:
        with torch.no_grad():
            for lin, bn, w, b, bn_vals, eps in reversed(saved):
                lin.weight.copy_(w)
                if b is None:
                    lin.bias = None
                else:
                    lin.bias.copy_(b)
                for p, v in zip(_bn_tensors(bn), bn_vals, strict=True):
                    p.copy_(v)
                bn.eps = eps


def _bn_tensors(bn: _BatchNorm) -> list[torch.Tensor]:
    """weight, bias (when affine), running mean and variance, in a fixed order (fill values 1, 0, 0, 1)."""
    ts = [bn.weight, bn.bias] if bn.affine else [torch.empty(0), torch.empty(0)]
    return [*ts, bn.running_mean, bn.running_var]


# --------------------------------------------------------------------------- the explainer

def _check_rule(kind: str, what: str) -> str:
    if kind not in RULES:
        raise ConfigError(f"LRP {what} must be one of {RULES}, got {kind!r}")
    return kind


@REGISTRY.register("lrp")
class LRP(Attribution):
    """LRP relevance per input pixel, (B, C, H, W) (or (B, T, C, H, W)), for CNNs (module docstring).

    ``rule``: one rule for every Linear / Conv layer ("zero", "epsilon", "gamma", "alpha_beta",
    "alpha1_beta0"), with ``first_rule`` optionally for the first layer ("zbox", "flat" or any);
    or ``composite`` (``COMPOSITES``, zennit 0.5.1 definitions): "epsilon_plus_flat" (default:
    flat on the first layer, z+ = alpha1-beta0 on convs, epsilon on dense layers),
    "epsilon_gamma_box" (z^B in pixel bounds [low, high] on the first layer, gamma on convs,
    epsilon on dense), "epsilon_alpha2_beta1", "epsilon_plus". ``epsilon`` = 1e-6 (epsilon rule and
    BatchNorm), ``stabilizer`` = 1e-6 (other rules), ``gamma`` = 0.25, ``alpha`` = 2, ``beta`` = 1.
    ``canonize``: merge every BatchNorm that follows a Linear / Conv into it (``merge_batchnorm``;
    found by tensor identity in one traced forward, so MONAI's ResNet blocks and projection
    shortcuts and DenseNet's conv1-norm2 pairs merge); the canonized forward must reproduce the
    model's logits (1e-4 relative) or ``ModelError`` is raised. BatchNorms that precede their conv
    (DenseNet's norm1-relu-conv, transitions, norm5) and ``canonize=False`` leave each BatchNorm
    as its own linear layer ``y = s x + t`` with the epsilon rule (captum's default for BatchNorm).
    Relevance starts as the target logit; the sum of the map equals it up to what biases and
    stabilisers absorb (conservation, Bach 2015 eq. 2: exact for LRP-0 without biases).
    """

    needs_hooks = True
    default_reduce = "sum"
    default_rule: str | None = None
    default_composite: str | None = "epsilon_plus_flat"

    def __init__(self, model: nn.Module, *, rule: str | None = None, composite: str | None = None,
                 first_rule: str | None = None, epsilon: float = 1e-6, stabilizer: float = 1e-6,
                 gamma: float = 0.25, alpha: float = 2.0, beta: float = 1.0, low: float = 0.0, high: float = 1.0,
                 canonize: bool = True, output: str = "logit") -> None:
        super().__init__(model, output=output)
        if output != "logit":
            raise ConfigError(f"LRP starts from the target logit; output={output!r} is not supported")
        if rule is not None and composite is not None:
            raise ConfigError("give either rule or composite, not both")
        if rule is None and composite is None:
            rule, composite = self.default_rule, self.default_composite
        if composite is not None and composite not in COMPOSITES:
            raise ConfigError(f"LRP composite must be one of {sorted(COMPOSITES)}, got {composite!r}")
        if rule is not None and _check_rule(rule, "rule") in INPUT_RULES:
            raise ConfigError(f"rule {rule!r} is an input-layer rule: pass it as first_rule")
        if first_rule is not None:
            _check_rule(first_rule, "first_rule")
        if alpha - beta != 1 or beta < 0:
            raise ConfigError(f"LRP alpha-beta needs alpha - beta = 1 and beta >= 0, got alpha={alpha}, beta={beta}")
        if epsilon < 0 or stabilizer < 0 or gamma < 0 or not low < high:
            raise ConfigError("LRP needs epsilon, stabilizer, gamma >= 0 and low < high")
        comp = COMPOSITES[composite] if composite else Composite(first=None, conv=rule, dense=rule)
        if first_rule is not None:
            comp = replace(comp, first=first_rule)
        self.composite, self.canonize = comp, canonize
        self._base = Rule(eps=stabilizer, gamma=gamma, alpha=alpha, beta=beta, low=low, high=high)
        self._epsilon = epsilon

    def rule_for(self, m: nn.Module, first: bool) -> Rule:
        """The rule of layer ``m`` (``first``: the first Linear / Conv of the forward)."""
        c = self.composite
        kind = "epsilon" if isinstance(m, _BatchNorm) else c.conv if isinstance(m, CONVS) else c.dense
        if first and c.first is not None:
            kind = c.first
        eps = self._epsilon if kind == "epsilon" else self._base.eps
        return replace(self._base, kind=kind, eps=eps)

    def _explain(self, x: torch.Tensor, spec: TargetSpec) -> torch.Tensor:
        if isinstance(self.model, VisionTransformer):
            raise ConfigError("LRP here is for CNNs; explain a ViT with 'chefer_lrp' (transformer attribution)")
        b = x.shape[0]
        has_bn = self.canonize and any(isinstance(m, _BatchNorm) for m in self.model.modules())
        pairs, logits0 = merge_pairs(self.model, x) if has_bn else ([], None)
        if logits0 is not None:  # targets from the clean forward; the hooked one is checked against it
            spec = TargetSpec(fixed=spec.resolve(logits0, b))
        parts: list[torch.Tensor] = []
        with merge_batchnorm(pairs) as merged:
            def run(s0: int, s1: int) -> None:
                ref = None if logits0 is None else logits0[s0:s1]
                parts.append(self._relevance(x[s0:s1], chunk_spec(spec, s0, s1, b), ref, merged))

            for_chunks(b, b, run, what="images")
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def _relevance(self, x: torch.Tensor, spec: TargetSpec, logits0: torch.Tensor | None,
                   merged: set[nn.Module]) -> torch.Tensor:
        """One hooked forward and T backward passes: (B, T, C, H, W) relevance. ``logits0``: the
        model's own logits, which the canonized and hooked forward must reproduce."""
        with torch.enable_grad(), lrp_hooks(self.model, self.rule_for, x, skip=merged) as st:
            logits = self.model(x)
            targets = spec.resolve(logits, x.shape[0])
            if logits0 is not None and float((logits.detach() - logits0).abs().max()) > \
                    1e-4 * (1 + float(logits0.abs().max())):
                raise ModelError("LRP: the canonized model's outputs differ from the model's own "
                                 "(does a merged BatchNorm's layer feed other layers too?)")
            if st.probe is None:
                raise ConfigError("LRP found no Linear / Conv layer in the model")
            scores = logits.gather(1, targets)
            maps = []
            for t in range(targets.shape[1]):
                (g,) = torch.autograd.grad(scores[:, t].sum(), st.probe, retain_graph=t < targets.shape[1] - 1)
                maps.append(g.reshape(x.shape))
        return torch.stack(maps, dim=1).to(x.dtype)


def chunk_spec(spec: TargetSpec, s0: int, s1: int, b: int) -> TargetSpec:
    """The targets of samples [s0, s1) of a batch of ``b``: per-sample targets sliced, others kept."""
    if spec.fixed is not None:
        return TargetSpec(fixed=spec.fixed[s0:s1])
    t = spec.target
    if isinstance(t, (list, tuple)) or (isinstance(t, torch.Tensor) and t.ndim >= 1):
        t = t[s0:s1] if len(t) == b else t
    return TargetSpec(t, spec.top_k)


def _preset(name: str, rule: str | None, composite: str | None, doc: str) -> type[LRP]:
    cls = type(f"LRP_{name}", (LRP,), {"default_rule": rule, "default_composite": composite, "__doc__": doc})
    return REGISTRY.register(f"lrp_{name}")(cls)


for _name, _rule in (("zero", "zero"), ("epsilon", "epsilon"), ("gamma", "gamma"), ("alpha_beta", "alpha_beta"),
                     ("alpha1_beta0", "alpha1_beta0")):
    _preset(_name, _rule, None, f"``LRP`` with rule={_rule!r} on every Linear / Conv layer.")
for _name in COMPOSITES:
    _preset(_name, None, _name, f"``LRP`` with composite={_name!r}.")
del _name, _rule
