"""003 fundus (Wu 2020, "Robust training and interpretability for fundus imaging"): corruption training
at level ranges 1, 1-2, 1-3, 1-4 shrinks the accuracy drop on level-4 corrupted images (baseline
8.8%, 1-4: 2.6%); adversarial training lowers the PGD success rate; integrated gradients with random
and adversarial baselines as the interpretability check.

``examples/fundus-dr-robustness.yaml`` on ``fundus-dr``. The accuracy drop is recomputed per image
(clean correct minus correct under each camera corruption at the largest level, averaged) so that two
models are compared paired on the same images; the attack success rates come from the report
(rates only: a two-proportion test).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.findings import _common as C

STUDY, TITLE = "003_fundus", "fundus DR: corruption training, adversarial training, IG baselines"
SOURCE = "Wu 2020 slides, Robust training and interpretability for fundus imaging (seed 003)"

SIZE = {True: "quick: 24 px, 48 / 16 / 24 images, `small-cnn`, 1 epoch, severities 1 and 4, PGD 2 steps, IG 4 "
              "steps, 12 images explained, 50 bootstrap resamples",
        False: "48 px, 800 / 200 / 200 images, `resnet8` trained from scratch in place of EfficientNet-B0, at most "
               "8 epochs (Adam 1e-3, cosine), corruption training at levels 1 / 1-2 / 1-3 / 1-4 (p 0.5), Linf PGD "
               "training 2.5/255 (5 steps, mix 0.5); the four camera corruptions at severities 1-4 on 200 test "
               "images; PGD 5 steps at 0.2 / 0.4 / 0.6 /255; IG (16 steps) with a uniform-noise baseline (4 draws) "
               "and a PGD adversarial baseline on 100 images; 1000 bootstrap resamples"}


def config(quick: bool) -> dict[str, Any]:
    raw = C.load_example("fundus-dr-robustness.yaml")
    if quick:
        raw = C.shrink(raw, size=24, n=(48, 16, 24), arch="small-cnn", epochs=1, n_boot=50, n_score=12)
        raw["models"] = [m for m in raw["models"] if m["name"] in ("standard", "corruption-1-4", "adversarial")]
        raw["corruption"]["severities"] = [1, 4]
        raw["attack"]["steps"] = 2
        for m in raw["models"]:
            obj = m["train"].get("objective") or {}
            if obj.get("name") == "adversarial":
                obj["steps"] = 2
    else:
        raw = C.shrink(raw, size=48, n=(800, 200, 200), arch="resnet8", epochs=8, n_boot=1000, n_score=100)
    steps = 4 if quick else 16
    raw["explain"]["options"]["ig_uniform"].update(n_steps=steps, n_baselines=2 if quick else 4)
    raw["explain"]["options"]["ig_adversarial"].update(n_steps=steps)
    raw["score"]["sanity"] = not quick
    raw["score"]["compare"] = [p for p in raw["score"]["compare"] if set(p) <= {m["name"] for m in raw["models"]}]
    raw["discovery"] = {"enabled": False}
    return raw


@torch.no_grad()
def _correct(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    pred = torch.cat([model(x[i:i + 128]).argmax(1) for i in range(0, len(x), 128)])
    return (pred == y).numpy().astype(float)


def _drops(res: Any, raw: dict, models: list[str]) -> dict[str, np.ndarray]:
    """Per image and model: correct on the clean image minus the mean correctness over the four
    corruptions at the largest configured severity (each corruption seeded as the audit's table)."""
    from medxai.corruptions.base import apply, max_severity

    c = raw["corruption"]
    s = C.audit_sample(raw, int(c["n"]))
    sev = max(c["severities"])
    xs = [apply(s.x, name, min(sev, max_severity(name)), seed=raw.get("seed", 0)) for name in c["names"]]
    out = {}
    for m in models:
        model = C.trained_model(res, m)
        clean = _correct(model, s.x, s.y)
        out[m] = clean - np.mean([_correct(model, x, s.y) for x in xs], axis=0)
    return out


def _success(rep: dict, a: str, b: str) -> dict[str, Any] | None:
    att = rep["robustness"].get("attack")
    if not att:
        return None
    i = len(att["eps"]) - 1
    ma, mb = att["models"][a], att["models"][b]
    if not ma.get("n") or not mb.get("n"):
        return None
    return C.two_proportions(ma["success_rate"][i] * ma["n"], ma["n"], mb["success_rate"][i] * mb["n"], mb["n"])


def run(quick: bool, workdir: Path) -> dict[str, Any]:
    raw = config(quick)
    res, secs = C.audit(raw, workdir / "fundus")
    rep, nb = res.report, raw["score"]["n_boot"]
    ch = C.at_chance(rep)
    names = [m["name"] for m in raw["models"]]
    trained = [n for n in names if n.startswith("corruption")]
    drops = _drops(res, raw, names)
    ids = [str(i) for i in range(len(drops["standard"]))]
    claims = []
    for m in trained:
        cmp = C.paired(dict(zip(ids, drops[m], strict=True)), dict(zip(ids, drops["standard"], strict=True)), nb)
        claims.append(C.claim(f"drop-{m}", "Robustness against image corruption: Accuracy drop on level-4 corrupted "
                              "validation set (baseline 8.8%, training levels 1-4: 2.6%)",
                              f"{m}'s accuracy drop (clean minus the four corruptions at severity "
                              f"{max(raw['corruption']['severities'])}) is smaller than the standard model's",
                              "lower", cmp, SOURCE, effect_name=f"drop {m} - drop standard", involved=(m, "standard"),
                              chance=ch))
    if "adversarial" in names:
        claims.append(C.claim("attack-success", "Robustness against adversarial attacks: Success rate of PGD-attack "
                              "at a given level (the lower the better); adversarial training",
                              "PGD success rate at the largest budget: adversarial model below standard", "lower",
                              _success(rep, "adversarial", "standard"), SOURCE, effect_name="success adv - standard",
                              involved=("adversarial", "standard"), chance=ch))
        for me in raw["explain"]["methods"]:
            claims.append(C.claim(f"lesion-{me}", "Through adversarial training ... the attention of the model should "
                                  "be shifted to the robust features, which makes the model more interpretable.",
                                  f"{me}: the adversarial model puts more energy on the lesions than the standard one",
                                  "higher", C.comparison(rep, "adversarial", "standard", me, "energy_pointing_game"),
                                  SOURCE, effect_name="energy adv - standard", involved=("adversarial", "standard"),
                                  chance=ch))
    for m in ("standard", "adversarial"):
        if m in names:
            claims.append(C.claim(f"ig-baseline-{m}", "Interpretability: visual comparison of saliency maps given by "
                                  "integrated gradients (random vs adversarial baselines)",
                                  f"{m} model: IG with the adversarial baseline puts more energy on the lesions than "
                                  "with the uniform-noise baseline", "higher",
                                  C.paired(C.per_image(res, m, "ig_adversarial", "energy_pointing_game"),
                                           C.per_image(res, m, "ig_uniform", "energy_pointing_game"), nb), SOURCE,
                                  involved=(m,), chance=ch,
                                  effect_name="energy IG adversarial - IG uniform"))
    return {"size": SIZE[quick], "claims": claims, "tables": _tables(rep, drops, names),
            "audit_seconds": round(secs, 1)}


def _tables(rep: dict, drops: dict[str, np.ndarray], names: list[str]) -> list[dict]:
    cor = rep["robustness"].get("corruption", {})
    cnames = list(next(iter(cor.get("models", {}).values()), {}).get("drops", {}))
    rows = [[m, f"{100 * drops[m].mean():.1f}%" if m in drops else "-", C._f(cor["models"][m]["clean"]),
             C._f(cor["models"][m]["mean_drop"])] + [C._f(cor["models"][m]["drops"][c][-1]) for c in cnames]
            for m in names if m in cor.get("models", {})]
    tables = [{"title": f"Drop table (study: baseline 8.8%, 1: 3.4%, 1-2: 3.2%, 1-3: 5.0%, 1-4: 2.6% accuracy drop); "
                        f"headline metric {cor.get('metric')}",
               "columns": ["model", "accuracy drop (largest severity)", "clean", "mean drop (all severities)"]
               + [f"{c} drop (largest)" for c in cnames], "rows": rows}]
    att = rep["robustness"].get("attack")
    if att:
        tables.append({"title": f"PGD success rate ({att['norm']}, {att['steps']} steps)",
                       "columns": ["model"] + att["eps_labels"],
                       "rows": [[m] + [C._f(v) for v in a["success_rate"]] for m, a in att["models"].items()]})
    return tables
