"""000 skin (Margeloiu et al. 2020, NeurIPS workshop): adversarially trained CNNs' gradient saliency is
sharper and more coherent and sits on the lesion; fine-tuning the robust network with a small learning
rate and robustifying only the first layers do too.

``examples/adversarial-saliency-skin.yaml`` on ``skin-lesion`` run twice: with the plain study (the
lesion is the only signal) and with the non-robust texture on (``nonrobust=8``: a faint label-coded
grating over the whole image, docs/synthetic.md; Ilyas et al. 2019), where a standard model can learn
the texture and adversarial training should move the evidence back onto the lesion. The texture's
mask is the whole image, so energy "on the texture" is 1 by construction: its pull is read off the
energy left on the lesion, and from the paired difference-in-differences
(robust - standard)_texture on - (robust - standard)_texture off over the same test images (the
texture never moves the anatomy or lesion of image i).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.findings import _common as C

STUDY, TITLE = "000_skin", "skin: adversarial training and saliency (robust, fine-tuned, first layers)"
SOURCE = "Margeloiu et al. 2020 abstract (seed 000)"
ROBUST = ("robust", "robust-finetuned", "robust-first-layers")
METHODS = ("saliency", "integrated_gradients")
WORDS = {"energy_pointing_game": "adversarially trained networks highlight regions with significant color variation "
                                 "within the lesion",
         "total_variation": "gradient-based saliency maps of adversarially trained CNNs are significantly sharper and "
                            "more visually coherent than those of standardly trained CNNs"}
VARIANT_WORDS = {"robust-finetuned": "fine-tuning a robust network with a small learning rate further improves "
                                     "saliency maps' sharpness",
                 "robust-first-layers": "robustifying the first layers to extract robust low-level features leads to "
                                        "visually coherent explanations"}
SIZE = {True: "quick: 24 px, 48 / 16 / 24 images, `resnet8`, 1 epoch each, PGD 2 steps, IG 4 steps, 12 images "
              "scored, 50 bootstrap resamples; texture off and on",
        False: "48 px, 600 / 150 / 150 images, balanced classes, `resnet8` trained from scratch in place of "
               "ResNet-18/50, at most 8 epochs (fine-tuned 3, first layers 3 with conv1, layer1 and layer2 "
               "frozen), L2 PGD training eps 0.64 (the "
               "study's 3 at 224 px scaled with the side), 7 steps; saliency and IG (16 steps) on 150 test images; "
               "attack L2 PGD 10 steps; 1000 bootstrap resamples; run twice: texture off, texture on "
               "(nonrobust=8, i.e. 8/255)"}


def config(quick: bool, texture: bool) -> dict[str, Any]:
    raw = C.load_example("adversarial-saliency-skin.yaml")
    old = raw["data"]["synthetic"]["size"]
    if quick:
        raw = C.shrink(raw, size=24, n=(48, 16, 24), arch="resnet8", epochs=1, n_boot=50, n_score=12, drop=())
    else:
        raw = C.shrink(raw, size=48, n=(600, 150, 150), arch="resnet8", epochs=8, n_boot=1000, n_score=150, drop=())
    size = raw["data"]["synthetic"]["size"]
    for m in raw["models"]:
        if m.get("init_from"):
            m["train"]["epochs"] = 1 if quick else 3
        obj = m["train"].get("objective") or {}
        if obj.get("name") == "adversarial":
            obj.update(eps=obj["eps"] * size / old, step_size=obj["step_size"] * size / old, steps=2 if quick else 7)
    a = raw["attack"]
    a.update(eps=[e * size / old for e in a["eps"]], steps=2 if quick else 10)
    raw["explain"]["methods"] = list(METHODS)
    raw["explain"]["options"] = {"integrated_gradients": {"n_steps": 4 if quick else 16}}
    raw["score"].update(metrics=["energy_pointing_game", "pointing_game", "total_variation"], sanity=not quick,
                        sanity_methods=["saliency"])
    if texture:
        raw["data"]["synthetic"]["options"]["nonrobust"] = 8
    raw["discovery"] = {"enabled": False}
    raw["intervention"] = {"enabled": False}
    return raw


def _success(rep: dict, robust: str) -> dict[str, Any] | None:
    att = rep["robustness"].get("attack")
    if not att:
        return None
    i = len(att["eps"]) - 1
    a, b = att["models"][robust], att["models"]["standard"]
    if not a.get("n") or not b.get("n"):
        return None
    return C.two_proportions(a["success_rate"][i] * a["n"], a["n"], b["success_rate"][i] * b["n"], b["n"])


def _did(on: Any, off: Any, robust: str, method: str, nb: int) -> dict[str, Any] | None:
    """Paired (robust - standard)_on - (robust - standard)_off of the energy on the lesion, per image."""
    def gap(res: Any) -> dict[str, float]:
        r = C.per_image(res, robust, method, "energy_pointing_game")
        s = C.per_image(res, "standard", method, "energy_pointing_game")
        return {i: r[i] - s[i] for i in r if i in s}

    return C.paired(gap(on), gap(off), nb)


def run(quick: bool, workdir: Path) -> dict[str, Any]:
    runs, secs = {}, {}
    for texture in (False, True):
        raw = config(quick, texture)
        runs[texture], secs[texture] = C.audit(raw, workdir / f"skin-texture-{'on' if texture else 'off'}")
    nb = raw["score"]["n_boot"]
    claims = []
    for texture, res in runs.items():
        tag, rep = "on" if texture else "off", res.report
        for rob in ROBUST:
            for metric, direction in (("energy_pointing_game", "higher"), ("total_variation", "lower")):
                for me in METHODS:
                    what = "more energy on the lesion" if metric == "energy_pointing_game" else \
                        "smoother maps (lower total variation)"
                    claims.append(C.claim(f"{metric.split('_')[0]}-{rob}-{me}-texture-{tag}",
                                          VARIANT_WORDS.get(rob, WORDS[metric]) if metric == "total_variation"
                                          else WORDS[metric], f"{rob} vs standard, {me}: {what}; texture {tag}",
                                          direction, C.comparison(rep, rob, "standard", me, metric), SOURCE,
                                          involved=(rob, "standard"), chance=C.at_chance(rep),
                                          effect_name=f"{metric} {rob} - standard", audit=f"texture {tag}"))
        claims.append(C.claim(f"attack-success-texture-{tag}", "adversarial training (L2 PGD) makes the network robust",
                              f"L2 PGD success at the largest budget: robust below standard; texture {tag}", "lower",
                              _success(rep, "robust"), SOURCE, effect_name="success robust - standard",
                              involved=("robust", "standard"), chance=C.at_chance(rep)))
    ch = C.at_chance(runs[True].report) | C.at_chance(runs[False].report)
    for rob in ROBUST:
        for me in METHODS:
            claims.append(C.claim(f"texture-pull-{rob}-{me}", "adversarial training penalises non-robust features and "
                                  "shifts the attention to the robust ones (Ilyas et al. 2019; the fundus slides' "
                                  "hypothesis, tested here on skin)",
                                  f"{me}: the robust model's lead over standard in energy on the lesion is larger with "
                                  "the texture on than off", "higher", _did(runs[True], runs[False], rob, me, nb),
                                  SOURCE, effect_name="(robust - standard) on - (robust - standard) off",
                                  involved=(rob, "standard"), chance=ch))
    return {"size": SIZE[quick], "claims": claims, "tables": _tables(runs),
            "audit_seconds": round(sum(secs.values()), 1),
            "context": f"Audit time: texture off {secs[False]:.0f} s, texture on {secs[True]:.0f} s."}


def _tables(runs: dict[bool, Any]) -> list[dict]:
    rows = []
    for texture, res in runs.items():
        rep = res.report
        for mo, m in rep["models"].items():
            rows.append([f"texture {'on' if texture else 'off'}", mo, C.ci_text(m["metrics"].get("balanced_accuracy"),
                                                                               "value")]
                        + [C.ci_text(C.summary(rep, mo, me, k)) for me in METHODS
                           for k in ("energy_pointing_game", "total_variation")])
    cols = ["data", "model", "balanced accuracy"] + [f"{me} {k}" for me in METHODS for k in ("energy", "TV")]
    return [{"title": "Per model: accuracy and maps, mean (95% CI) over test images", "columns": cols, "rows": rows}]
