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
from benchmarks._harness import peak_mb, row

FORCE = {"data", "evaluate", "attack", "corrupt", "explain", "score", "sanity"}
CAM_LAYER = "features.block3"  # the small-cnn's last feature block: the layer medxai's Grad-CAM picks


def config(quick: bool) -> dict[str, Any]:
    if quick:
        data = {"size": 32, "n_train": 64, "n_val": 16, "n_test": 32}
        models = [{"name": "standard", "arch": "small-cnn", "train": {"epochs": 3, "batch_size": 32, "lr": 0.01}}]
        n_att, n_score, n_boot, eps, steps, sanity_n = 24, 16, 50, [0, "2/255", "8/255"], 3, 4
    else:
        data = {"size": 64, "n_train": 400, "n_val": 100, "n_test": 200}
        tr = {"epochs": 3, "batch_size": 32, "lr": 0.003}
        models = [{"name": "standard", "arch": "small-cnn", "train": tr},
                  {"name": "robust", "arch": "small-cnn",
                   "train": {**tr, "objective": {"name": "adversarial", "eps": "2/255", "steps": 2}}}]
        n_att, n_score, n_boot, eps, steps, sanity_n = 200, 100, 1000, [0, "1/255", "2/255", "4/255"], 5, 8
    return {
        "name": "peer", "seed": 0,
        "data": {"synthetic": {"study": "cxr-pneumonia", "shortcut": 0.9, **data}},
        "models": models, "evaluation": {"n_boot": n_boot},
        "attack": {"eps": eps, "steps": steps, "n": n_att, "autoattack": {"enabled": False},
                   "radius": {"enabled": False}},
        "corruption": {"names": ["gaussian_noise", "motion_blur"], "severities": [1, 3], "n": n_att, "gallery": False},
        "explain": {"methods": ["saliency", "integrated_gradients", "gradcam"], "target": "label", "n_show": 4,
                    "n_score": n_score, "options": {"integrated_gradients": {"n_steps": 16}}},
        "score": {"metrics": ["energy_pointing_game", "deletion"], "options": {"deletion": {"steps": 16}},
                  "sanity_methods": ["saliency"], "sanity_n": sanity_n, "n_boot": n_boot, "shortcut": False},
        "intervention": {"enabled": False}, "discovery": {"enabled": False},
    }


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


def _miss_reason(stages: list[dict], parts: dict[str, float]) -> str:
    """Where the time goes on each side (measured), for a missed target."""
    ours: dict[str, float] = {}
    for e in stages:
        if not e["stage"].startswith("train/"):
            ours[e["stage"].split("/")[0]] = ours.get(e["stage"].split("/")[0], 0.0) + e["seconds"]

    def fmt(d: dict[str, float]) -> str:
        return ", ".join(f"{k} {v:.2f}" for k, v in sorted(d.items(), key=lambda kv: -kv[1]))

    return ("measured per part (s): medxai " + fmt(ours) + "; peer " + fmt(parts)
            + ". medxai's stages also do work the peer side does not (the data stage's example figure, the "
              "random-map deletion baseline of every score stage, probabilities for the captions, cache writes)")


def _warm_imports() -> None:
    """Import the peer libraries before timing (their import is not part of the comparison)."""
    import art.attacks.evasion
    import art.estimators.classification  # noqa: F401
    import captum.attr  # noqa: F401
    import scipy.stats  # noqa: F401
    import sklearn.metrics  # noqa: F401

    from benchmarks._harness import import_quantus

    import_quantus()


def run(quick: bool = True) -> dict[str, Any]:
    from medxai.pipeline.audit import run_audit
    from medxai.pipeline.config import load_config
    from medxai.runs import load_run

    raw = config(quick)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "audit"
        run_audit(load_config(copy.deepcopy(raw)), out)  # trains; also the warm-up of every stage
        cfg = load_config(copy.deepcopy(raw))
        models = {mc.name: load_run(glob.glob(str(out / "stages" / "train" / mc.name / "*" / "run"))[0])[0].eval()
                  for mc in cfg.models}
        test, sample = _inputs(cfg)
        _warm_imports()
        box: dict[str, Any] = {}
        mem_m = peak_mb(lambda: box.update(res=run_audit(cfg, out, force=FORCE)))
        medxai_s = sum(e["seconds"] for e in box["res"].stages if not e["stage"].startswith("train/"))
        mem_p = peak_mb(lambda: box.update(peer=peer.run_peer(models, test, sample, cfg,
                                                              {n: CAM_LAYER for n in models})))
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
        rows = [row("audit core numbers (non-training stages)", "scikit-learn + ART + captum + Quantus", medxai_s,
                    peer_s, target=3.0, miss_reason=_miss_reason(box["res"].stages, parts),
                    medxai_peak_mb=mem_m, peer_peak_mb=mem_p,
                    memory="peak-RSS rise over the call (/proc VmHWM after clear_refs), one process",
                    size="quick (32 px, 32 test images, 1 model)" if quick else
                    "full, demo-like (64 px, 200 test images, 2 models)",
                    note="medxai time: sum of stage_log seconds of the forced non-training stages")]
        rows += agreement_rows(rep, numbers, out, n_correct)
    return {"kind": "audit_peer", "rows": rows,
            "notes": "Peer side: benchmarks/_peer_pipeline.py (what a user writes without medxai)."}


if __name__ == "__main__":
    import pprint

    pprint.pprint(run(quick=True)["rows"])
