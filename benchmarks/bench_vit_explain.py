"""ViT attention explanations, batched, vs one-image-at-a-time loops (the reference code's only mode).

Peers, in the reference code's style (``_vit_reference``, also the tests' oracles), one image at a time:
- rollout: jacobgil's ``vit-explain`` (hooks on the attention, full N x N products per layer);
- Chefer 2021b: Transformer-MM-Explainability's ``generate_relevance`` (parameters require grad,
  ``backward()`` of one_hot * output, gradients saved by tensor hooks, R = R + cam @ R on N x N);
- Chefer 2021a: Transformer-Explainability's ``relprop`` (every rule by ``torch.autograd.grad``
  on a recomputed forward, ``gradprop``), then ``compute_rollout_attention`` on N x N matrices.
Model: ``vit-s16`` (random init, seed 0, eval mode) at 224 px, batch 4, per-sample targets
(quick: a 2-block patch-4 ViT at 32 px, batch 2); ViT-B/16 costs 4x more than the shared 2-core
machine's budget allows here, and the batching gain does not depend on the width.
Agreement: max |ours - peer| / max |peer|.
Peak memory: the rise of the process's peak RSS during one call (CPU) or the CUDA allocator peak.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from benchmarks._harness import flop_fields, peak_mb, row, timeit_pair
from benchmarks._vit_reference import generic_row, lrp, rollout_row
from medxai.explain import AttentionRollout, CheferGeneric, CheferLRP
from medxai.models import create

KIND = "vit_explain"


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- benchmark

def _agree(ours: torch.Tensor, peer: torch.Tensor) -> float:
    return float((ours.float() - peer.float()).abs().max() / peer.float().abs().max().clamp_min(1e-30))


def run(quick: bool = False) -> dict:
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    if quick:
        model = create("vit-ti4", 10, 3, img_size=32, depth=2, embed_dim=32, num_heads=2)
        size, b, reps, name = 32, 2, 1, "2-block patch-4 ViT (dim 32) at 32 px"
    else:
        model = create("vit-s16", 10, 3)
        size, b, reps, name = 224, 4, 1, "vit-s16 at 224 px"
    model = model.to(dev).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(b, 3, size, size, generator=g).to(dev)
    t = (torch.arange(b) % 10).to(dev)
    gh = size // model.patch_size

    def grid(rows):
        return torch.stack(rows).reshape(b, 1, gh, gh)

    cases = [  # (work, peer, medxai method, peer call, the model's bare passes take an input backward)
        ("attention rollout", "jacobgil vit-explain style, one image at a time",
         AttentionRollout(model, upsample=False), lambda: grid([rollout_row(model, x[i:i + 1]) for i in range(b)]),
         False),
        ("Chefer 2021b generic", "Transformer-MM-Explainability style (backward over parameters), one at a time",
         CheferGeneric(model, upsample=False),
         lambda: grid([generic_row(model, x[i:i + 1], int(t[i])) for i in range(b)]), True),
        ("Chefer 2021a LRP", "Transformer-Explainability style (autograd gradprop per rule), one at a time",
         CheferLRP(model, upsample=False),
         lambda: grid([lrp(model, x[i:i + 1], int(t[i]), pixels=False)[0] for i in range(b)]), True),
    ]
    rows: list[dict[str, Any]] = []
    for work, peer_name, method, peer, backward in cases:
        res = timeit_pair({"medxai": lambda m=method: (m.attribute(x, t), _sync())[0],
                           "peer": lambda p=peer: (p(), _sync())[0]}, repeats=reps, warmup=1)
        ours_loop = torch.cat([method.attribute(x[i:i + 1], t[i:i + 1]) for i in range(b)])
        fl = flop_fields(model, lambda m=method: m.attribute(x, t), peer, x, backward=backward)  # medxai: one batch
        if quick:  # the harness check: no memory probes
            mem = mem_half = mem_peer = None
        else:
            mem = peak_mb(lambda m=method: m.attribute(x, t))
            mem_half = peak_mb(lambda m=method: m.attribute(x[: b // 2], t[: b // 2]))
            mem_peer = peak_mb(peer)
        rows.append(row(f"{work}, {name}, batch {b}, per-sample targets", peer_name,
                        res["medxai"]["median_s"], res["peer"]["median_s"], target=1.0, tol=1e-4,
                        agreement=_agree(res["medxai"]["result"], res["peer"]["result"]),
                        miss_reason="the explicit attention path costs as much as the loop's matrix products",
                        agreement_kind="max abs diff / max |peer|", images=b, device=str(dev),
                        batched_vs_own_loop=_agree(res["medxai"]["result"], ours_loop),
                        peak_mb_medxai=mem, peak_mb_medxai_half_batch=mem_half, peak_mb_peer=mem_peer, **fl,
                        note="medxai batched; batched_vs_own_loop: medxai at batch 1 in a loop vs batched"))
    for p in model.parameters():
        p.requires_grad_(False)
    return {"kind": KIND, "rows": rows,
            "notes": f"Model: {name}, 10 outputs, random init (seed 0), eval mode; inputs U(0, 1); targets i mod 10; "
                     f"device {dev}; torch threads {torch.get_num_threads()}; {reps} repeats (median). "
                     f"Grid {gh}x{gh} = {gh * gh} patches ({math.prod((gh, gh)) + 1} tokens)."}


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick=True), indent=1, default=str))
