"""002 ViT attention ("Are attention maps a solution to the interpretability crisis in AI-assisted
medical imaging?"): ViT-B/16 from four initialisations (random, supervised, DINO, MAE), raw attention,
rollout, Grad-CAM and Chefer's two methods scored against box annotations.

``examples/vit-attention.yaml`` on ``cxr-pneumonia`` (the study's CP-Child is paediatric chest X-ray)
with box masks (``masks: box``: the bounding boxes of each consolidation's parts). The study's
ImageNet checkpoints are replaced by tiny pretraining inside the study (``medxai.train.pretrain``):
supervised, DINO and MAE on another synthetic study (``skin-lesion``, RGB, 3 classes: an
out-of-domain stand-in for ImageNet; ``init_vit`` sums the patch filters over RGB for the 1-channel
X-rays). Claims: per initialisation, Chefer's methods, rollout and Grad-CAM against raw attention
(top-k IoU with the boxes, paired over images); per method family, each pretrained initialisation's
raw attention against random's (pointing game, the audit's paired comparisons).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmarks.findings import _common as C

STUDY, TITLE = "002_vit", "ViT attention maps vs Grad-CAM vs Chefer across initialisations"
SOURCE = "attention_maps README, 'Are attention maps a solution to the interpretability crisis...' (seed 002)"
INITS = ("random", "supervised", "dino", "mae")
METHODS = ("raw_attention", "rollout", "chefer_generic", "chefer_lrp", "gradcam")
SIZE = {True: "quick: 24 px, 48 / 16 / 24 images, `vit-ti4` (patch 4) with depth 2, width 48, 2 heads, 1 epoch; "
              "pretraining 1 epoch on 32 skin-lesion images per objective; 12 images scored; 50 bootstrap resamples",
        False: "48 px, 600 / 150 / 150 images, balanced, box masks; `vit-ti4` (patch 4, 144 tokens) with depth 4, "
               "width 96, 3 heads in place of ViT-B/16; pretraining on 600 skin-lesion images at 48 px: supervised "
               "5 epochs, DINO 5 epochs, MAE 10 epochs (AdamW, docs/pretrain.md defaults); fine-tuning 8 epochs "
               "(Adam 5e-4, batch 32; the study's presets are for ViT-B and are not used); 150 test images scored; "
               "1000 bootstrap resamples"}


def _arch(quick: bool, size: int) -> dict[str, Any]:
    return ({"depth": 2, "embed_dim": 48, "num_heads": 2} if quick else {"depth": 4, "embed_dim": 96, "num_heads": 3}) \
        | {"img_size": size}


def _pretrain(quick: bool, size: int, work: Path) -> dict[str, tuple[Path, dict]]:
    """Tiny supervised / DINO / MAE pretraining on skin-lesion images: {init: (weights, record)}."""
    from medxai.data import SyntheticDataset
    from medxai.models import create
    from medxai.train.pretrain import pretrain

    n = 32 if quick else 600
    ds = SyntheticDataset("skin-lesion", n, size=size, seed=1, split="train", balanced=True)
    epochs = {"supervised": 1, "dino": 1, "mae": 1} if quick else {"supervised": 5, "dino": 5, "mae": 10}
    out = {}
    for obj, ep in epochs.items():
        model = create("vit-ti4", 3, in_chans=3, **_arch(quick, size))
        t0 = time.perf_counter()
        r = pretrain(model, ds, obj, epochs=ep, batch_size=32, seed=0, out=work / obj, progress=False)
        out[obj] = (r.weights, {"epochs": ep, "images": n, "final_loss": r.losses[-1],
                                "seconds": round(time.perf_counter() - t0, 1)})
    return out


def config(quick: bool, weights: dict[str, Path]) -> dict[str, Any]:
    raw = C.load_example("vit-attention.yaml")
    if quick:
        raw = C.shrink(raw, size=24, n=(48, 16, 24), arch=None, epochs=1, n_boot=50, n_score=12)
    else:
        raw = C.shrink(raw, size=48, n=(600, 150, 150), arch=None, epochs=8, n_boot=1000, n_score=150)
    size = raw["data"]["synthetic"]["size"]
    for m in raw["models"]:
        m.update(arch="vit-ti4", options=_arch(quick, size))
        m["train"].update(optimizer="adam", lr=5e-4)
        if m["init"] != "random":
            m["pretrained"] = str(weights[m["init"]])
    raw["score"]["sanity"] = not quick
    raw["discovery"] = {"enabled": False}
    raw["intervention"] = {"enabled": False}
    return raw


def _topk_column(res: Any, model: str, method: str) -> str | None:
    """The top-k IoU column scored (``topk_iou@10``: the box of the map's top 10% pixels, if scored)."""
    cols = [c for c in (C.stage(res, f"score/{model}/{method}") or {}).get("metrics", {}) if c.startswith("topk_iou")]
    return "topk_iou@10" if "topk_iou@10" in cols else next(iter(cols), None)


def run(quick: bool, workdir: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    size = 24 if quick else 48
    pre = _pretrain(quick, size, workdir / "pretrain")
    pre_s = time.perf_counter() - t0
    raw = config(quick, {k: v[0] for k, v in pre.items()})
    res, secs = C.audit(raw, workdir / "vit")
    rep, nb = res.report, raw["score"]["n_boot"]
    models = {m["init"]: m["name"] for m in raw["models"]}
    claims = []
    for init, mo in models.items():
        col = _topk_column(res, mo, "raw_attention")
        for me in METHODS[1:]:
            cmp = C.paired(C.per_image(res, mo, me, col), C.per_image(res, mo, "raw_attention", col), nb) if col \
                else None
            claims.append(C.claim(f"{me}-vs-attention-{init}", "Are attention maps a solution to the interpretability "
                                  "crisis in AI-assisted medical imaging? (raw attention vs Grad-CAM and the Chefer "
                                  "method)", f"{init} init: {me} overlaps the boxes more than raw attention "
                                  f"({col or 'top-k IoU'}, PNEUMONIA images)", "higher", cmp, SOURCE,
                                  involved=(mo,), chance=C.at_chance(rep),
                                  effect_name=f"{col} {me} - raw_attention"))
    for init in INITS[1:]:
        for me in ("raw_attention", "chefer_lrp"):
            claims.append(C.claim(f"{init}-vs-random-{me}", "4 different initialization methods are used: random "
                                  "(i.e., from scratch), supervised, DINO, and MAE",
                                  f"{me}: the {init}-initialised model hits the boxes more often than the "
                                  "randomly initialised one (pointing game)",
                                  "higher", C.comparison(rep, models[init], models["random"], me, "pointing_game"),
                                  SOURCE, effect_name=f"pointing game {init} - random",
                                  involved=(models[init], models["random"]), chance=C.at_chance(rep)))
    return {"size": SIZE[quick], "claims": claims, "tables": _tables(res, rep, models),
            "audit_seconds": round(secs, 1), "pretraining": {k: v[1] for k, v in pre.items()},
            "context": f"Pretraining inside the study took {pre_s:.0f} s ("
                       + ", ".join(f"{k} {v[1]['epochs']} epochs, final loss {v[1]['final_loss']:.3g}"
                                   for k, v in pre.items()) + "); the audit "
                       f"{secs:.0f} s. The study's checkpoints are ImageNet ViT-B/16; ours are tiny and pretrained on "
                       "synthetic skin images, so initialisation effects here say little about ImageNet's."}


def _tables(res: Any, rep: dict, models: dict[str, str]) -> list[dict]:
    col = _topk_column(res, models["random"], "raw_attention") or "topk_iou"
    rows_pg, rows_iou = [], []
    for me in METHODS:
        rows_pg.append([me] + [C.ci_text(C.summary(rep, models[i], me, "pointing_game")) for i in INITS])
        rows_iou.append([me] + [C.ci_text(C.summary(rep, models[i], me, col)) for i in INITS])
    acc = [["balanced accuracy"] + [C.ci_text(rep["models"][models[i]]["metrics"].get("balanced_accuracy"), "value")
                                    for i in INITS]]
    cols = ["method", *INITS]
    return [{"title": "Pointing game against the boxes: mean (95% CI), methods x initialisations", "columns": cols,
             "rows": rows_pg},
            {"title": f"{col} against the boxes: mean (95% CI), methods x initialisations", "columns": cols,
             "rows": rows_iou},
            {"title": "Classifier", "columns": ["", *INITS], "rows": acc}]
