"""The main job end to end on tiny synthetic studies: numbers, caching, report, example configs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml

from medxai.pipeline.audit import run_audit
from medxai.pipeline.config import load_config

EXAMPLES = Path(__file__).parents[1] / "examples"

TINY = {
    "name": "tiny",
    "seed": 0,
    "data": {"synthetic": {"study": "cxr-pneumonia", "size": 32, "n_train": 160, "n_val": 48, "n_test": 48,
                           "shortcut": 0.9}},
    "models": [
        {"name": "standard", "arch": "small-cnn", "train": {"epochs": 2, "batch_size": 32, "lr": 0.003}},
        {"name": "robust", "arch": "small-cnn",
         "train": {"epochs": 2, "batch_size": 32, "lr": 0.003,
                   "objective": {"name": "adversarial", "eps": "2/255", "steps": 2}}},
    ],
    "evaluation": {"n_boot": 50},
    "attack": {"eps": [0, "1/255", "4/255"], "steps": 2, "n": 48,
               "autoattack": {"enabled": True, "n": 16, "steps": 4, "queries": 40},
               "radius": {"enabled": True, "n": 16}},
    "corruption": {"names": ["gaussian_noise", "motion_blur"], "severities": [1, 5], "n": 32},
    "explain": {"methods": ["saliency", "gradcam"], "target": "label", "n_show": 4, "n_score": 32},
    "score": {"metrics": ["pointing_game", "energy_pointing_game", "sparseness", "max_sensitivity"],
              "options": {"max_sensitivity": {"n_perturbations": 3}}, "sanity_methods": ["saliency"],
              "sanity_n": 4, "n_boot": 50},
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("audit")
    res = run_audit(load_config(copy.deepcopy(TINY)), out)
    return out, res


def test_audit_numbers_and_findings(tiny_run):
    out, res = tiny_run
    report = json.loads((out / "report.json").read_text())
    assert report["findings"] == json.loads(json.dumps(res.findings))
    for name in ("standard", "robust"):
        m = report["models"][name]["metrics"]
        assert 0 <= m["balanced_accuracy"]["value"] <= 1
        assert m["balanced_accuracy"]["ci_low"] <= m["balanced_accuracy"]["value"] <= m["balanced_accuracy"]["ci_high"]
        att = report["robustness"]["attack"]["models"][name]
        # success never falls as eps grows; at eps 0 nothing is fooled and robust accuracy is the
        # clean accuracy of the same 48 test images the evaluation stage used
        assert att["success_rate"][0] == 0 and att["success_rate"] == sorted(att["success_rate"])
        assert att["robust_accuracy"][0] == pytest.approx(m["accuracy"]["value"], abs=1e-12)
        aa, rad = att["autoattack"], att["radius"]
        # AutoAttack on the first 16 images at the largest budget: binary, so targeted DLR is replaced
        assert aa["n"] == 16 and aa["eps"] == pytest.approx(4 / 255) and aa["attacks_ran"][0] == "apgd-ce"
        assert "apgd-t(margin)" in aa["attacks_ran"] and aa["notes"]
        after = [aa["clean_accuracy"], *(aa["robust_accuracy_after"][k] for k in aa["attacks_ran"])]
        assert after == sorted(after, reverse=True) and aa["robust_accuracy"] == after[-1]
        assert sum(aa["broken_by"].values()) == round((aa["clean_accuracy"] - aa["robust_accuracy"]) * 16)
        # each image's DeepFool radius: misclassified (0), found (> 0) or not found (None)
        assert rad["n"] == 16 and rad["n_misclassified"] + rad["n_found"] + rad["n_not_found"] == 16
        assert rad["n_misclassified"] == round((1 - aa["clean_accuracy"]) * 16)
        if rad["n_found"]:
            assert 0 < rad["q25"] <= rad["median"] <= rad["q75"]
    # every finding's numbers are the report's numbers
    for f in report["findings"]:
        if f["kind"] == "robustness":
            i = report["robustness"]["attack"]["eps"].index(f["eps"])
            for n, v in f["success_rate"].items():
                assert v == report["robustness"]["attack"]["models"][n]["success_rate"][i]
        if f["kind"] == "shortcut":
            row = next(r for r in report["shortcut"]["rows"] if r["model"] == f["model"] and r["method"] == f["method"])
            assert f["peak_rate"] == row["peak_rate"]
    summ = {(s["model"], s["method"], s["metric"]): s for s in report["scores"]["summary"]}
    pg = summ[("standard", "saliency", "pointing_game")]
    assert 0 <= pg["mean"] <= 1 and pg["n"] + pg["n_nan"] == 32
    # normal images carry no lesion: their localisation scores are NaN, never counted as hits
    assert pg["n_nan"] > 0
    # explanation robustness re-explains noisy copies with the audited method: a relative change >= 0
    ms = summ[("standard", "gradcam", "max_sensitivity")]
    assert ms["n"] == 32 and ms["mean"] >= 0
    row = next(r for r in report["scorecard"]["models"]["standard"]["rows"]
               if r["dimension"] == "explanation robustness")
    assert row["metric"] == "max_sensitivity (saliency)" and row["value"] == pytest.approx(
        summ[("standard", "saliency", "max_sensitivity")]["mean"])
    # a graded status, or the at-chance guard's (this tiny model may know nothing yet)
    assert row["status"] in ("pass", "warn", "fail") or row["reason"] == "not meaningful for a model at chance"
    assert report["sanity"] and all(len(s["spearman"]) == len(s["layers"]) for s in report["sanity"])
    html = (out / "report.html").read_text()
    assert "Findings" in html and "<script src" not in html
    assert "Standard AutoAttack" in html and "apgd-t(margin)" in html and "Robustness radius" in html


def test_rerun_trains_nothing_and_one_method_change_recomputes_only_it(tiny_run):
    out, _ = tiny_run
    again = run_audit(load_config(copy.deepcopy(TINY)), out)
    assert all(e["cached"] for e in again.stages), [e for e in again.stages if not e["cached"]]
    changed = copy.deepcopy(TINY)
    changed["explain"]["options"] = {"gradcam": {"relu": False}}
    third = run_audit(load_config(changed), out)
    ran = sorted(e["stage"] for e in third.stages if not e["cached"])
    # discovery clusters the gradcam maps (its default method), so it follows them
    assert ran == ["discovery/robust/gradcam", "discovery/standard/gradcam", "explain/robust/gradcam",
                   "explain/standard/gradcam", "score/robust/gradcam", "score/standard/gradcam"]
    log = [json.loads(line) for line in (out / "stage_log.jsonl").read_text().splitlines()]
    assert not any(e["stage"].startswith("train/") and not e["cached"] for e in log[len(log) - len(third.stages):])


def test_force_recomputes_a_stage(tiny_run):
    out, _ = tiny_run
    res = run_audit(load_config(copy.deepcopy(TINY)), out, force={"attack"})
    ran = sorted(e["stage"] for e in res.stages if not e["cached"])
    assert ran == ["attack/robust", "attack/standard"]


def test_demo_report_in_browser(tiny_run, browser):
    out, _ = tiny_run
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get((out / "report.html").as_uri())
    for section in ("Findings", "Data", "Models", "Robustness", "Explanations", "Explanation scores",
                    "Sanity checks", "Shortcut"):
        assert browser.find_element(By.XPATH, f"//h2[starts-with(normalize-space(), '{section}')]").is_displayed()
    grid = browser.find_element(By.ID, "xgrid")
    before = grid.screenshot_as_png
    Select(browser.find_element(By.ID, "ctl-method")).select_by_value("gradcam")
    assert grid.screenshot_as_png != before
    mid = grid.screenshot_as_png
    Select(browser.find_element(By.ID, "ctl-model")).select_by_value("robust")
    assert grid.screenshot_as_png != mid
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


# ------------------------------------------------------------------------ the five example configs
def _tiny_example(raw: dict, tmp: Path) -> dict:
    raw = copy.deepcopy(raw)
    raw["data"]["synthetic"].update(size=32, n_train=96, n_val=32, n_test=32)
    for m in raw["models"]:
        m.setdefault("train", {}).update(epochs=1, batch_size=32)
        if m["arch"].startswith("vit-"):  # a two-block tiny ViT: the sanity check re-explains every layer
            m["arch"] = "vit-ti8"
            m.setdefault("options", {})["depth"] = 2
    raw["evaluation"] = {"n_boot": 20}
    if raw["attack"].get("enabled", True):
        raw["attack"].update(n=16, steps=2)
    if raw["corruption"].get("enabled", True):
        raw["corruption"]["n"] = 16
    raw["explain"].update(n_show=2, n_score=12)
    opts = raw["explain"].setdefault("options", {})
    for name in raw["explain"]["methods"]:
        o = opts.setdefault(name, {})
        method = o.get("method", name)
        if method == "lime":
            o["num_samples"] = 48
        elif method == "integrated_gradients":
            o["n_steps"] = 4
        elif method == "smoothgrad":
            o["n_samples"] = 3
        elif method == "occlusion":
            o.update(window=8, stride=8)
    raw["score"].update(sanity_n=2, n_boot=20)
    return raw


def _write_checkpoints(raw: dict, tmp: Path, in_chans: int, num_classes: int) -> None:
    """Local weight files in the layouts the configs name (random values, real formats)."""
    from safetensors.torch import save_file

    from medxai.models import create

    for m in raw["models"]:
        if not m.get("pretrained"):
            continue
        src = create(m["arch"], 1000, in_chans=3, **m.get("options", {})).state_dict()
        sd = {k: v for k, v in src.items() if not k.startswith("normalize.")}
        init = m.get("init")
        if init in ("dino", "mae"):
            sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
            path = tmp / f"{m['name']}.pth"
            torch.save({"model": sd} if init == "mae" else sd, path)
        else:
            path = tmp / f"{m['name']}.safetensors"
            save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
        m["pretrained"] = str(path)


@pytest.mark.slow
@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_example_config_runs_on_its_synthetic_stand_in(example, tmp_path):
    raw = yaml.safe_load((EXAMPLES / example).read_text())
    if any(m.get("card") for m in raw["models"]):
        pytest.skip("its models are outside files (tests/test_outside_models.py runs this example)")
    raw = _tiny_example(raw, tmp_path)
    _write_checkpoints(raw, tmp_path, 3, 2)
    res = run_audit(load_config(raw), tmp_path / "run", synthetic=True)
    report = res.report
    assert list(report["models"]) == [m["name"] for m in raw["models"]]
    metric = {"fundus-dr-robustness.yaml": "kappa_quadratic", "chexpert-multilabel.yaml": "auc_macro"}.get(
        example, "balanced_accuracy")
    for m in report["models"].values():
        v = m["metrics"][metric]["value"]
        assert v != v or -1 <= v <= 1  # NaN allowed only where undefined (e.g. one class predicted)
    methods = set(raw["explain"]["methods"])
    assert set(report["explanations"]["methods"]) == methods
    scored = {(s["model"], s["method"]) for s in report["scores"]["summary"]}
    assert scored == {(m["name"], me) for m in raw["models"] for me in methods}
    if example == "fundus-dr-robustness.yaml":
        cor = report["robustness"]["corruption"]
        assert set(next(iter(cor["models"].values()))["drops"]) == {"motion_blur", "light_leakage", "underexposure",
                                                                   "overexposure"}
        assert len(report["robustness"]["attack"]["eps"]) == 4
    if example == "chexpert-multilabel.yaml":
        st = json.loads(next((tmp_path / "run" / "stages" / "score").rglob("result.json")).read_text())
        assert {i.rsplit("#", 1)[1] for i in st["ids"]} == {"1", "2", "3"}
    if example == "adversarial-saliency-skin.yaml":
        pairs = {(c["a"], c["b"]) for c in report["scores"]["comparisons"]}
        assert ("robust", "standard") in pairs and ("robust-first-layers", "standard") in pairs
    if example == "pneumonia-mobilenet.yaml":
        assert report["shortcut"]["rows"]
    assert (tmp_path / "run" / "report.html").stat().st_size > 10_000


@pytest.mark.parametrize("bad,match", [({"explain": {"methods": ["gradcamm"]}}, "explain.methods: 'gradcamm'"),
                                       ({"score": {"metrics": ["pointing"]}}, "score.metrics"),
                                       ({"corruption": {"names": ["fog2"]}}, "corruption.names: 'fog2'")])
def test_unknown_names_fail_before_any_stage_runs(tmp_path, bad, match):
    from medxai.errors import ConfigError

    raw = {**copy.deepcopy(TINY), **bad}
    with pytest.raises(ConfigError, match=match):
        run_audit(load_config(raw), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before the data stage: nothing trained, nothing written
