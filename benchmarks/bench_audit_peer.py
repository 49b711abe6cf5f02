"""``medxai audit`` against the same numbers computed with the peer libraries (issue 20).

One audit on a synthetic study trains the models; then, timed side by side on the same trained
models and the same images, (a) the audit's non-training stages re-run (``force``: data, evaluate,
attack, corrupt, explain, score, sanity; time = the sum of their ``stage_log.jsonl`` seconds, the
report assembly not included) and (b) ``benchmarks._peer_pipeline.run_peer`` (scikit-learn, ART,
captum, Quantus; medxai's corruption functions, which no peer has). Peak memory of each: the rise
of the process's peak RSS over the call (``_harness.peak_mb``: ``/proc/self/clear_refs`` then
``VmHWM``), in one process.

Sizes: quick = 32 px, 64/16/32 train/val/test, one small-cnn (3 epochs), 24 attacked images, 16
explained; full = demo-like: 64 px, 400/100/200, two small-cnn (standard and adversarially
trained, 3 epochs), 200 attacked / corrupted images, 100 explained, n_boot 1000.
"""

from __future__ import annotations

import copy
import glob
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import _peer_pipeline as peer
from benchmarks._harness import bare_pass_seconds, batch_like, peak_mb, row

FORCE = {"data", "evaluate", "attack", "corrupt", "explain", "score", "sanity"}


DEMO = Path(__file__).resolve().parent.parent / "src" / "medxai" / "configs" / "demo.yaml"
TRAIN_EPOCHS = 2  # training is not timed: each model trains this many epochs (the demo: 8 and 16)
SIZES = ("quick", "demo", "large")
CORE = {"attack": ("norm", "eps", "steps", "n"), "corruption": ("names", "severities", "n"),
        "explain": ("methods", "options", "output", "target", "n_show", "n_score")}


def _demo_size() -> dict[str, Any]:
    """The demo's config (``medxai demo``) reduced to the numbers the peer pipeline computes: its data,
    models (trained ``TRAIN_EPOCHS`` epochs, untimed), budgets, corruptions, explainers and sample sizes;
    the scores the peers have (energy pointing game, deletion) and MPRT; no radius, AutoAttack,
    intervention or discovery (no peer computes them)."""
    from medxai._util.io import safe_yaml_load

    demo = safe_yaml_load(DEMO.read_text())
    models = [{**m, "train": {**m["train"], "epochs": TRAIN_EPOCHS}} for m in demo["models"]]
    core = {k: {f: demo[k][f] for f in fields if f in demo[k]} for k, fields in CORE.items()}
    sc = demo["score"]
    return {
        "name": "peer", "seed": demo["seed"], "data": demo["data"], "models": models,
        "evaluation": demo["evaluation"],
        "attack": {**core["attack"], "autoattack": {"enabled": False}, "radius": {"enabled": False}},
        "corruption": {**core["corruption"], "gallery": False}, "explain": core["explain"],
        "score": {"metrics": ["energy_pointing_game", "deletion"],
                  "options": {"deletion": sc["options"]["deletion"]}, "sanity_methods": sc["sanity_methods"],
                  "sanity_n": sc["sanity_n"], "n_boot": sc["n_boot"], "shortcut": False},
        "intervention": {"enabled": False}, "discovery": {"enabled": False},
    }


def config(size: str) -> dict[str, Any]:
    """``quick``: a smoke size (32 px, one small-cnn); ``demo``: the demo's sizes (48 px, 400 test
    images, two resnet8, 200 attacked / corrupted / explained); ``large``: the demo at 72 px with
    800 test images and 400 attacked / corrupted / explained."""
    raw = _demo_size()
    if size == "quick":
        raw["data"]["synthetic"].update(size=32, n_train=64, n_val=16, n_test=32)
        raw["models"] = [{"name": "standard", "arch": "small-cnn",
                          "train": {"epochs": 2, "batch_size": 32, "lr": 0.01}}]
        raw["attack"].update(n=24, eps=[0, "2/255", "8/255"], steps=3)
        raw["corruption"].update(n=24, names=["gaussian_noise", "motion_blur"], severities=[1, 3])
        raw["explain"].update(n_score=16, n_show=4)
        raw["score"].update(sanity_n=4, n_boot=50, sanity_methods=["saliency"], options={"deletion": {"steps": 16}})
        raw["evaluation"] = {"n_boot": 50}
    elif size == "large":
        raw["data"]["synthetic"].update(size=72, n_test=800)  # 72^2 is a multiple of 24 steps (Quantus needs it)
        raw["attack"]["n"] = raw["corruption"]["n"] = raw["explain"]["n_score"] = 400
    return raw


def _inputs(cfg: Any) -> tuple[tuple[torch.Tensor, torch.Tensor], Any]:
    """The whole test split (x, y) and the audit's evaluation sample, rebuilt as the audit draws it."""
    from medxai.pipeline.data import build_datasets, eval_sample

    ds = build_datasets(cfg.data, splits=("test",))[0]["test"]
    items = [ds[i] for i in range(len(ds))]
    test = (torch.stack([it["image"] for it in items]), torch.tensor([int(it["label"]) for it in items]))
    n = max(cfg.attack.n, cfg.corruption.n, cfg.explain.n_score, cfg.explain.n_show)
    return test, eval_sample(ds, n, seed=cfg.seed)


def _medxai_maps(out: Path, name: str, method: str) -> torch.Tensor:
    from safetensors.torch import load_file

    f = max(glob.glob(str(out / "stages" / "explain" / name / method / "*" / "maps.safetensors")),
            key=lambda p: Path(p).stat().st_mtime)
    return load_file(f)["maps"]


def _spearman_min(a: torch.Tensor, b: torch.Tensor) -> float:
    """The smallest per-image Spearman correlation; an image whose two maps are both constant
    (e.g. an all-zero Grad-CAM) counts 1 if they are equal, else 0 (the correlation is undefined)."""
    from scipy.stats import spearmanr

    vals = []
    for x, y in zip(a.reshape(len(a), -1).double(), b.reshape(len(b), -1).double(), strict=True):
        if bool((x == x[0]).all()) or bool((y == y[0]).all()):
            vals.append(float(torch.equal(x, y)))
        else:
            vals.append(float(spearmanr(x.numpy(), y.numpy())[0]))
    return float(np.min(vals))


def _nanmean(v: Any) -> float:
    v = np.asarray([np.nan if e is None else e for e in v], float)
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


def _metric_rows(name: str, m: dict, r: dict) -> list[dict]:
    rows = []
    for key, tol in (("balanced_accuracy", 0.0), ("auc", 1e-9)):
        ci = max(abs(m[key]["ci_low"] - r["metrics"][key]["ci_low"]),
                 abs(m[key]["ci_high"] - r["metrics"][key]["ci_high"]))
        rows.append(row(f"{name}: {key}", "scikit-learn", None, None, tol=tol,
                        agreement=abs(m[key]["value"] - r["metrics"][key]["value"]),
                        medxai=m[key]["value"], peer_value=r["metrics"][key]["value"], ci_max_abs_diff=ci,
                        note="CI: percentile bootstrap on both sides (numpy default_rng(seed), rows resampled)"))
    return rows


def _robustness_rows(name: str, rep: dict, r: dict, n_correct: int) -> list[dict]:
    att = rep["robustness"]["attack"]
    sr_m, sr_p = att["models"][name]["success_rate"], r["success_rate"]
    images = max(abs(a - b) for a, b in zip(sr_m, sr_p, strict=True)) * n_correct
    corr = rep["robustness"]["corruption"]["models"][name]["drops"]
    diff = max(abs(a - b) for n in corr for a, b in zip(corr[n], r["corruption"][n], strict=True)
               if a is not None and b is not None)
    return [row(f"{name}: PGD success rate per eps", "ART 1.20 PGD", None, None, agreement=images,
                agreement_kind="max images apart", tol=2.0, medxai=sr_m, peer_value=sr_p, eps=att["eps"],
                n_correct=n_correct, note="different PGD implementations (random start draws; medxai keeps each "
                "image's best iterate and counts smaller-eps successes at larger eps)"),
            row(f"{name}: corruption balanced-accuracy drops", "scikit-learn (+ medxai corruptions)", None, None,
                agreement=diff, tol=1e-12,
                note="no peer library offers the corruptions: both sides apply medxai.corruptions.apply")]


def _score_rows(name: str, method: str, summ: dict, sc: dict) -> list[dict]:
    """Energy pointing game and deletion means, with the definition-bridging rows where they apply."""
    rows = []
    bridges = (("deletion_ties_broken", "deletion", "deletion, Quantus given tie-broken maps",
                "the same maps with equal values ordered by index (medxai's stable order): the check that a "
                "deletion gap comes from the tie order alone"),
               ("epg_relu", "energy_pointing_game", "energy_pointing_game, Quantus given relu(maps)",
                "the check that the gap of the signed map is the definition alone"))
    for key, metric, label, note in bridges:
        if key in sc:
            mx, pv = summ[(name, method, metric)]["mean"], _nanmean(sc[key])
            rows.append(row(f"{name}: {method} {label} (mean)", "Quantus 0.6", None, None, agreement=abs(mx - pv),
                            tol=1e-3, medxai=mx, peer_value=pv, note=note))
    for metric in ("energy_pointing_game", "deletion"):
        mx, pv = summ[(name, method, metric)]["mean"], _nanmean(sc[metric])
        signed = metric == "energy_pointing_game" and "epg_relu" in sc
        tied = metric == "deletion" and "deletion_ties_broken" in sc and abs(mx - pv) > 1e-3
        if tied:
            note = ("different definition of the order of equal map values: Quantus sorts with np.argsort(-a) "
                    "(quicksort, ties in arbitrary order), medxai orders ties by lowest index (stable); "
                    f"{sc['tied_share']:.0%} of the pixels share a value with another")
        elif signed:
            note = ("different definition: Quantus' AttributionLocalisation sums |a| (abs=True by default), "
                    "medxai sums relu(a) (Kohlbrenner 2020); the same only for non-negative maps")
        else:
            note = ("deletion = RISE AUC rebuilt from Quantus PixelFlipping (baseline 0) and the clean probability"
                    if metric == "deletion" else "")
        rows.append(row(f"{name}: {method} {metric} (mean)", "Quantus 0.6", None, None, agreement=abs(mx - pv),
                        tol=None if signed or tied else 1e-3, medxai=mx, peer_value=pv, note=note))
    return rows


def agreement_rows(rep: dict, p: dict, out: Path, n_correct: dict[str, int]) -> list[dict]:
    """One row per compared number (see the module docstring of ``_peer_pipeline`` for definitions)."""
    rows: list[dict] = []
    summ = {(s["model"], s["method"], s["metric"]): s for s in rep["scores"]["summary"]}
    for name, r in p.items():
        rows += _metric_rows(name, rep["models"][name]["metrics"], r)
        rows += _robustness_rows(name, rep, r, n_correct[name])
        for method in r["maps"]:
            ours = _medxai_maps(out, name, method)
            rows.append(row(f"{name}: {method} maps", "captum 0.9", None, None, agreement_kind="1 - min Spearman",
                            agreement=1 - _spearman_min(ours, r["maps"][method]), tol=0.01,
                            max_abs_diff=float((ours - r["maps"][method]).abs().max())))
            rows += _score_rows(name, method, summ, r["scores"][method])
        for method, q in r["mprt"].items():
            san = next(s for s in rep["sanity"] if s["model"] == name and s["method"] == method)
            rows.append(row(f"{name}: {method} MPRT final Spearman", "Quantus 0.6 MPRT", None, None,
                            agreement=abs(san["final_spearman"] - q["spearman"][-1]), tol=None,
                            medxai=san["final_spearman"], peer_value=q["spearman"][-1],
                            note="informative only: different randomisation (medxai by block, Quantus every module "
                                 "with reset_parameters) and different random draws"))
    return rows


def _definition_checks(models: dict[str, torch.nn.Module], sample: Any, cfg: Any, numbers: dict[str, Any]) -> None:
    """Not timed: Quantus once more where a definition differs, on inputs that remove the difference:
    deletion on maps with ties ordered by index (medxai's stable order), the energy pointing game on
    relu(maps) of signed maps (medxai's relu against Quantus' |a|)."""
    ns = max(cfg.explain.n_score, cfg.explain.n_show)
    steps = int(cfg.score.options.get("deletion", {}).get("steps", 224))
    masks = None if sample.masks is None else sample.masks[:ns]
    for name, r in numbers.items():
        for method, maps in r["maps"].items():
            if bool((maps < 0).any()) and masks is not None:
                r["scores"][method]["epg_relu"] = peer.quantus_scores(
                    models[name], sample.x[:ns], sample.y[:ns], maps.clamp_min(0), masks, None)["energy_pointing_game"]
            share = peer.tied_share(maps)
            if share > 0.01:
                r["scores"][method]["tied_share"] = share
                r["scores"][method]["deletion_ties_broken"] = peer.quantus_scores(
                    models[name], sample.x[:ns], sample.y[:ns], peer.ties_broken(maps), None, steps)["deletion"]


def stage_seconds(stages: list[dict]) -> dict[str, float]:
    """medxai's seconds per stage kind (attack, score, ...) over the non-training stages."""
    ours: dict[str, float] = {}
    for e in stages:
        if not e["stage"].startswith("train/"):
            kind = e["stage"].split("/")[0]
            ours[kind] = round(ours.get(kind, 0.0) + e["seconds"], 3)
    return ours


def parts_text(ours: dict[str, float], parts: dict[str, float]) -> str:
    """Where the time goes on each side (measured seconds per part)."""
    def fmt(d: dict[str, float]) -> str:
        return ", ".join(f"{k} {v:.2f}" for k, v in sorted(d.items(), key=lambda kv: -kv[1]))

    return "medxai " + fmt(ours) + "; peer " + fmt(parts)


def _warm_imports() -> None:
    """Import the peer libraries before timing (their import is not part of the comparison)."""
    import art.attacks.evasion
    import art.estimators.classification  # noqa: F401
    import captum.attr  # noqa: F401
    import scipy.stats  # noqa: F401
    import sklearn.metrics  # noqa: F401

    from benchmarks._harness import import_quantus

    import_quantus()


def _work_gflops(rep: dict) -> float | None:
    """medxai's model GFLOPs over the non-training stages (``report["work"]``, counted by hooks)."""
    vals = [r["gflops"] for r in rep["work"]["rows"] if not r["stage"].startswith("train/")]
    return None if any(v is None for v in vals) else float(sum(vals))


def minimum_gflops(cfg: Any, rep: dict, out: Path) -> tuple[float, dict[str, float]]:
    """The least model work (GFLOPs) the audit's definitions need for these numbers, per part, in the
    work table's units (forward images x F + input-backward images x 2F, F = FLOPs of one image;
    backwards that stop at a layer, as Grad-CAM's, count 0 on both sides):

    - evaluate: one forward per test image (every later stage reads these clean logits);
    - attack: per eps > 0 and sample still standing (the audit's reuse rule: a sample fooled and
      changed at a smaller eps is not attacked again; the stage's ``attacked`` counts), ``steps``
      forward + input-backward steps and one forward of the final iterate;
    - corrupt: one forward per image and corruption level;
    - explain: saliency one forward + backward, integrated gradients ``n_steps`` of them, a CAM one
      forward per image;
    - score: deletion ``steps`` forwards per image and method (the clean point is the clean logit),
      and once per model for the random-map baseline; the energy pointing game needs no forward;
    - sanity: per randomised block one explanation of each sanity image (the original maps are the
      explain stage's).
    """
    f = rep["work"]["flops_per_image"]
    counts = minimum_images(cfg, rep, out)
    parts: dict[str, float] = {}
    for name, per in counts.items():
        for k, (fwd, grad) in per.items():
            parts[k] = parts.get(k, 0.0) + (fwd + 3 * grad) * f[name] / 1e9
    return sum(parts.values()), parts


def minimum_images(cfg: Any, rep: dict, out: Path) -> dict[str, dict[str, tuple[int, int]]]:
    """Per model and part: (forward-only images, forward + input-backward images) of the minimum work."""
    ig = int(cfg.explain.options.get("integrated_gradients", {}).get("n_steps", 50))
    cost = {"saliency": (0, 1), "integrated_gradients": (0, ig), "gradcam": (1, 0)}
    d_steps = int(cfg.score.options.get("deletion", {}).get("steps", 224))
    from medxai.corruptions.base import max_severity

    levels = sum(1 for n in cfg.corruption.names for v in cfg.corruption.severities if v <= max_severity(n))
    ns = max(cfg.explain.n_score, cfg.explain.n_show)
    out_counts: dict[str, dict[str, tuple[int, int]]] = {}
    for name in rep["work"]["flops_per_image"]:
        (adir,) = glob.glob(str(out / "stages" / "attack" / name / "*"))
        attacked = sum(json.loads((Path(adir) / "result.json").read_text())["attacked"])
        sanity = [(len(s["layers"]) * cfg.score.sanity_n, cost[s["method"]]) for s in rep["sanity"]
                  if s["model"] == name]
        out_counts[name] = {
            "evaluate": (cfg.data.synthetic.n_test, 0),
            "attack": (attacked, attacked * cfg.attack.steps),
            "corrupt": (cfg.corruption.n * levels, 0),
            "explain": (ns * sum(cost[m][0] for m in cfg.explain.methods),
                        ns * sum(cost[m][1] for m in cfg.explain.methods)),
            "score": (ns * d_steps * (len(cfg.explain.methods) + 1), 0),
            "sanity": (sum(n * c[0] for n, c in sanity), sum(n * c[1] for n, c in sanity))}
    return out_counts


def _peer_gflops(meter: Any) -> float | None:
    work = meter.since({})
    vals = [w["flops"] for w in work.values()]
    return None if not vals or any(v is None for v in vals) else float(sum(vals)) / 1e9


def _baseline_row(name: str, rep: dict, r: dict) -> dict:
    mine = next(f["random_mean"] for f in rep["scores"]["faithfulness"] if f["model"] == name)
    pv = _nanmean(r["random_deletion"])
    return row(f"{name}: random-map deletion baseline (mean)", "Quantus 0.6", None, None, agreement=abs(mine - pv),
               tol=1e-3, medxai=mine, peer_value=pv,
               note="the scorecard's faithfulness reference: the same seeded uniform maps on both sides")


SIZE_NOTES = {"quick": "quick (32 px, 32 test images, 1 small-cnn)",
              "demo": "demo size (the demo's config: 48 px, 400 test images, 2 resnet8, 200 attacked / corrupted / "
                      "explained, 4 budgets, 5 corruptions x 3 levels, IG 16 steps, deletion 24 steps)",
              "large": "large (the demo's config at 72 px, 800 test images, 400 attacked / corrupted / explained)"}


def _train_only(raw: dict[str, Any]) -> Any:
    """The config with every stage after the evaluation off: the untimed run that trains the models."""
    cfg = copy.deepcopy(raw)
    cfg["attack"]["enabled"] = cfg["corruption"]["enabled"] = False
    cfg["explain"]["methods"], cfg["score"]["sanity"] = [], False
    return cfg


def bare_image_rates(model: torch.nn.Module, x1: torch.Tensor) -> tuple[float, float]:
    """(forward, forward + input-backward) images/s of the model's bare passes on this machine, at the
    audit's CPU batch (``model_batch_for``) with channels-last weights (the audit's layout), best of 3:
    the attainable rates that the time floor of the audit's work uses."""
    from medxai.explain.engine import model_batch_for

    m = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
    for p in m.parameters():
        p.requires_grad_(False)
    x = batch_like(x1, model_batch_for(x1[:1]))
    return tuple(len(x) / bare_pass_seconds(m, x, backward=b)[1] for b in (False, True))


def floor_seconds(work: dict[str, dict[str, Any]], rates: dict[str, tuple[float, float]]) -> float | None:
    """Seconds the counted work takes at the bare rates: per model, the forwards that carry no backward
    at the forward rate and the forward + input-backward pairs at the gradient rate."""
    total = 0.0
    for name, w in work.items():
        if w.get("images") is None:
            return None
        fwd, grad = rates[name]
        total += max(0, w["images"] - w["backward_images"]) / fwd + w["backward_images"] / grad
    return total


def _efficiency(models: dict, sample: Any, rep: dict, meter: Any, minimum: dict, medxai_s: float,
                peer_s: float) -> dict[str, Any]:
    """Both sides' time floors (their counted work at the bare-pass rates), their shares of it, and the
    ratio limit: the peer's time over the floor of the definitions' minimum work."""
    rates = {n: bare_image_rates(m, sample.x[:1]) for n, m in models.items()}
    ours: dict[str, dict[str, int]] = {}
    for r in rep["work"]["rows"]:
        if r["stage"].startswith("train/"):
            continue
        for n, w in (r.get("models") or {}).items():
            acc = ours.setdefault(n, {"images": 0, "backward_images": 0})
            for k in acc:
                acc[k] += w[k] if w.get(k) is not None else 0
    least = {n: {"images": sum(a + b for a, b in per.values()), "backward_images": sum(b for _, b in per.values())}
             for n, per in minimum.items()}
    f_m, f_p, f_min = floor_seconds(ours, rates), floor_seconds(meter.since({}), rates), floor_seconds(least, rates)
    return {"bare_images_per_s": {n: [round(a), round(b)] for n, (a, b) in rates.items()},
            "medxai_floor_s": f_m, "peer_floor_s": f_p, "minimum_floor_s": f_min,
            "medxai_share_of_floor": None if f_m is None else f_m / medxai_s,
            "peer_share_of_floor": None if f_p is None else f_p / peer_s,
            "ratio_limit": None if not f_min else peer_s / f_min,
            "ratio_limit_is": "the peer's time over the floor of the definitions' minimum work (its forwards and "
                              "input-backwards at the bare-pass rates): the most any implementation reaches here"}


def run_size(size: str) -> list[dict]:
    """Train (untimed), then time the audit's non-training stages and the peer pipeline side by side."""
    from medxai._util.flops import WorkMeter
    from medxai.explain.cam import find_cam_layer
    from medxai.pipeline.audit import run_audit
    from medxai.pipeline.config import load_config
    from medxai.runs import load_run

    raw = config(size)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "audit"
        run_audit(load_config(_train_only(raw)), out)  # trains (untimed); the timed run reuses the models
        cfg = load_config(copy.deepcopy(raw))
        models = {mc.name: load_run(glob.glob(str(out / "stages" / "train" / mc.name / "*" / "run"))[0])[0].eval()
                  for mc in cfg.models}
        test, sample = _inputs(cfg)
        layers = {n: find_cam_layer(m, sample.x[:1])[0] for n, m in models.items()}
        _warm_imports()
        box: dict[str, Any] = {}
        mem_m = peak_mb(lambda: box.update(res=run_audit(cfg, out, force=FORCE)))
        medxai_s = sum(e["seconds"] for e in box["res"].stages if not e["stage"].startswith("train/"))
        meter = WorkMeter()
        for n, m in models.items():
            meter.attach(n, m, tuple(sample.x.shape[1:]))
        try:
            mem_p = peak_mb(lambda: box.update(peer=peer.run_peer(models, test, sample, cfg, layers)))
        finally:
            meter.close()
        numbers, peer_s = box["peer"]
        parts: dict[str, float] = {}
        for r in numbers.values():
            for k, v in r["seconds"].items():
                parts[k] = parts.get(k, 0.0) + v
        _definition_checks(models, sample, cfg, numbers)
        rep = json.loads((out / "report.json").read_text())
        n_correct = {}
        for n, mdl in models.items():
            x, y = sample.x[:cfg.attack.n], sample.y[:cfg.attack.n]
            n_correct[n] = int((peer.probabilities(mdl, x).argmax(1) == y.numpy()).sum())
        g_m, g_p = _work_gflops(rep), _peer_gflops(meter)
        ours = stage_seconds(box["res"].stages)
        g_min, g_parts = minimum_gflops(cfg, rep, out)
        eff = _efficiency(models, sample, rep, meter, minimum_images(cfg, rep, out), medxai_s, peer_s)
        label = SIZE_NOTES[size]
        rows = [row(f"audit core numbers (non-training stages), {size} size", "scikit-learn + ART + captum + Quantus",
                    medxai_s, peer_s, target=3.0 if size == "large" else None,
                    miss_reason="measured per part (s): " + parts_text(ours, parts), medxai_peak_mb=mem_m,
                    peer_peak_mb=mem_p, seconds_per_part=parts_text(ours, parts),
                    medxai_gflops=g_m, peer_gflops=g_p, minimum_gflops=g_min, **eff,
                    flops=None if g_m is None else g_m * 1e9, peer_flops=None if g_p is None else g_p * 1e9,
                    bare_flops_per_s=None if not (g_m and eff["medxai_floor_s"]) else g_m * 1e9 / eff["medxai_floor_s"],
                    memory="peak-RSS rise over the call (/proc VmHWM after clear_refs), one process", size=label,
                    note="medxai time: sum of stage_log seconds of the forced non-training stages; GFLOPs: model "
                         "forwards and input-backwards counted by hooks on both sides (medxai.WorkMeter)"),
                row(f"audit model work against the definitions' minimum, {size} size", None, None, None,
                    target=1.5 if size == "large" else None, target_on="flops_to_minimum", higher_is_better=False,
                    flops_to_minimum=None if g_m is None else g_m / g_min, medxai_gflops=g_m, minimum_gflops=g_min,
                    peer_to_minimum=None if g_p is None else g_p / g_min,
                    minimum_parts={k: round(v, 2) for k, v in g_parts.items()}, size=label,
                    note="minimum: benchmarks/bench_audit_peer.minimum_gflops (what each number's definition needs)",
                    miss_reason="see the stage table in report['work']")]
        for name, r in numbers.items():
            rows.append(_baseline_row(name, rep, r))
        rows += [dict(r, work=f"{r['work']} ({size})") for r in agreement_rows(rep, numbers, out, n_correct)]
    return rows


def run(quick: bool = True) -> dict[str, Any]:
    rows = []
    for size in (("quick",) if quick else ("demo", "large")):
        rows += run_size(size)
    return {"kind": "audit_peer", "rows": rows,
            "notes": "Peer side: benchmarks/_peer_pipeline.py (what a user writes without medxai). Training is "
                     f"not timed ({TRAIN_EPOCHS} epochs per model at every size)."}


if __name__ == "__main__":
    import pprint

    pprint.pprint(run(quick=True)["rows"])
