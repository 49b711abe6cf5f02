"""The scorecard and verdict: thresholds, the degenerate-model guard, the positive class, no silent drops."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from sklearn.metrics import recall_score
from torch import nn

import medxai
from medxai.data import open_dataset, write_synthetic
from medxai.pipeline.config import load_config
from medxai.pipeline.verdict import chance_level, scorecard

SIZE = 16
SMALL = {
    "attack": {"n": 12, "eps": [0, "2/255"], "steps": 2},
    "corruption": {"n": 12, "names": ["gaussian_noise"], "severities": [1], "gallery": False},
    "explain": {"methods": ["saliency"], "n_show": 2, "n_score": 12},
    "score": {"metrics": ["energy_pointing_game", "deletion"], "sanity_n": 2, "n_boot": 50},
    "evaluation": {"n_boot": 100},
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("verdict")
    write_synthetic("cxr-pneumonia", root / "data", {"test": 24}, size=SIZE, seed=3)
    return root


class Constant(nn.Module):
    """Always the same logits, whatever the image (a conv whose output is multiplied by zero keeps
    parameters for the sanity check and a graph for gradients)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.register_buffer("logits", torch.tensor([0.3, 1.2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits + 0.0 * self.conv(x).mean((2, 3))


def test_constant_model_fails_discrimination_and_passes_nothing(data):
    res = medxai.audit({"const": Constant()}, str(data / "data"), out=data / "const", **SMALL)
    card = res.report["scorecard"]["models"]["const"]
    rows = {r["dimension"]: r for r in card["rows"]}
    assert rows["discrimination"]["status"] == "fail"
    assert "every prediction is class 'PNEUMONIA'" in rows["discrimination"]["reason"]
    assert card["at_chance"] and not any(r["status"] == "pass" for r in card["rows"])
    assert rows["adversarial robustness"]["reason"] == "not meaningful for a model at chance"
    assert card["verdict"].startswith("const: fails: discrimination")
    texts = [f["text"] for f in res.findings]
    assert any("is at chance" in t for t in texts)
    assert not any(t.startswith("All explained methods pass") for t in texts)
    assert not any(t.startswith("Attack success rate") for t in texts)
    html = (data / "const" / "report.html").read_text()
    assert 'id="scorecard"' in html and 'data-status="fail"' in html


def _lesion_normal(data, tmp_path):
    """The folder layout with classes LESION / NORMAL (sorted: LESION first)."""
    d = tmp_path / "ln"
    shutil.copytree(data / "data", d)
    (d / "medxai.json").unlink()
    (d / "test" / "PNEUMONIA").rename(d / "test" / "LESION")
    return d


def test_positive_class_decides_sensitivity(data, tmp_path):
    d = _lesion_normal(data, tmp_path)
    model = _trained(data)  # outputs: [NORMAL, PNEUMONIA(=LESION)]
    opts = {**SMALL, "attack": {"enabled": False}, "corruption": {"enabled": False},
            "score": {"metrics": ["energy_pointing_game"], "sanity": False, "n_boot": 20}}
    ds = open_dataset(d, split="test", classes=["NORMAL", "LESION"])
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    y = np.array([int(ds[i]["label"]) for i in range(len(ds))])
    with torch.no_grad():
        pred = model(x).argmax(1).numpy()
    want = recall_score(y == 1, pred == 1)  # LESION recall (LESION is class 1 in that order)
    assert want > 0.5 and 0 < pred.mean() < 1  # a model that separates the classes
    res = medxai.audit({"m": model}, str(d), out=tmp_path / "pos", positive_class="LESION", **opts)
    assert res.report["data"]["class_names"] == ["NORMAL", "LESION"]
    assert res.report["data"]["positive_class"] == "LESION"
    assert res.report["models"]["m"]["metrics"]["sensitivity"]["value"] == pytest.approx(want)
    assert res.report["models"]["m"]["per_class_recall"]["LESION"] == pytest.approx(want)
    html = (tmp_path / "pos" / "report.html").read_text()
    assert "take <b>LESION</b> as the positive class" in html
    # by default the second class in the data's order ([LESION, NORMAL]) is positive, and the report says so;
    # the module's outputs are then read in that order: its output 1 is called NORMAL
    res2 = medxai.audit({"m": model}, str(d), out=tmp_path / "pos2", **opts)
    assert res2.report["data"]["positive_class"] == "NORMAL"
    assert res2.report["models"]["m"]["metrics"]["sensitivity"]["value"] == pytest.approx(
        recall_score(y == 0, pred == 1))


def _report(**over) -> dict:
    """A minimal report.json for scorecard(): one binary model with every section."""
    rep = {
        "data": {"task": "binary", "class_names": ["a", "b"]},
        "models": {"m": {"metrics": {"auc": {"value": 0.9, "ci_low": 0.85, "ci_high": 0.95},
                                     "ece": {"value": 0.07, "ci_low": None, "ci_high": None}},
                         "confusion": {"labels": ["a", "b"], "matrix": [[40, 10], [5, 45]]}}},
        "robustness": {"attack": {"eps": [0.0, 1 / 255], "eps_labels": ["0", "1/255"],
                                  "models": {"m": {"success_rate": [0.0, 0.6], "robust_accuracy": [0.9, 0.3],
                                                   "n": 50}}},
                       "corruption": {"metric": "balanced_accuracy",
                                      "models": {"m": {"mean_drop": 0.02, "drops": {"noise": [0.01, 0.03]}}}}},
        "scores": {"summary": [{"model": "m", "method": "saliency", "metric": "energy_pointing_game", "mean": 0.35,
                                "ci_low": 0.3, "ci_high": 0.4}],
                   "faithfulness": [{"model": "m", "method": "saliency", "value": 0.08, "ci_low": 0.04,
                                     "ci_high": 0.12, "method_mean": 0.2, "random_mean": 0.28, "n": 40}],
                   "not_measured": []},
        "explanations": {"methods": ["saliency"]},
        "sanity": [{"model": "m", "method": "saliency", "score": 0.2, "passes": True}],
    }
    rep.update(over)
    return rep


def _rows(rep: dict, **verdict) -> dict:
    cfg = load_config({"models": [{"name": "m"}], "verdict": verdict})
    return {r["dimension"]: r for r in scorecard(rep, cfg)["models"]["m"]["rows"]}


def test_scorecard_statuses_follow_the_thresholds():
    rows = _rows(_report())
    assert rows["discrimination"]["status"] == "pass" and rows["discrimination"]["chance"] == 0.5
    assert rows["calibration"]["status"] == "warn"  # 0.07 between 0.05 and 0.10
    assert rows["adversarial robustness"]["status"] == "fail"  # 0.6 > 0.5
    lo, hi = rows["adversarial robustness"]["ci_low"], rows["adversarial robustness"]["ci_high"]
    assert lo < 0.6 < hi and hi - lo == pytest.approx(0.26, abs=0.03)  # Wilson interval of 30/50
    assert rows["corruption robustness"]["status"] == "pass" and "noise" in rows["corruption robustness"]["detail"]
    assert rows["explanation localisation"]["status"] == "warn"
    assert rows["explanation faithfulness"]["status"] == "pass"
    assert rows["sanity"]["status"] == "pass"
    assert rows["subgroups"]["status"] == "not measured" and "groups" in rows["subgroups"]["reason"]
    assert rows["shortcut reliance"]["status"] == "not measured"
    # stricter thresholds from the config move the statuses
    stricter = _rows(_report(), calibration_ece={"pass": 0.1, "warn": 0.2}, attack_success={"pass": 0.7, "warn": 0.8})
    assert stricter["calibration"]["status"] == "pass" and stricter["adversarial robustness"]["status"] == "pass"
    assert stricter["calibration"]["threshold"] == {"pass": 0.1, "warn": 0.2, "direction": "lower is better"}


def test_discrimination_ci_including_chance_fails_and_silences_the_rest():
    rep = _report()
    rep["models"]["m"]["metrics"]["auc"] = {"value": 0.62, "ci_low": 0.45, "ci_high": 0.79}
    rows = _rows(rep)
    assert rows["discrimination"]["status"] == "fail" and "includes chance (0.50)" in rows["discrimination"]["reason"]
    assert all(r["status"] == "not measured" for d, r in rows.items() if d != "discrimination")


def test_chance_levels():
    assert chance_level("auc", 2) == 0.5 and chance_level("kappa_quadratic", 5) == 0.0
    assert chance_level("balanced_accuracy", 4) == 0.25


def test_missing_sections_are_not_measured_with_reasons():
    rep = _report(robustness={}, sanity=[])
    rep["scores"] = {"summary": [], "faithfulness": [],
                     "not_measured": [{"model": "m", "method": "saliency", "metric": "energy_pointing_game",
                                       "reason": "the data have no lesion masks"}]}
    rows = _rows(rep)
    assert rows["explanation localisation"]["reason"] == "the data have no lesion masks"
    assert "attack.enabled" in rows["adversarial robustness"]["reason"]
    assert rows["sanity"]["status"] == "not measured"


def test_report_faithfulness_rows_equal_a_paired_comparison_of_the_stage_values(data):
    from medxai.metrics import compare

    res = medxai.audit({"m": _trained(data)}, str(data / "data"), out=data / "faith", **SMALL)
    (row,) = res.report["scores"]["faithfulness"]
    (st,) = (data / "faith" / "stages" / "score" / "m" / "saliency").glob("*/result.json")
    r = json.loads(st.read_text())
    f = lambda v: np.array([np.nan if x is None else x for x in v], float)
    want = compare(f(r["random_baseline"]["deletion"]), f(r["metrics"]["deletion"]["values"]), n_boot=50, seed=0)
    assert row["value"] == pytest.approx(want["mean_diff"]) and row["n"] == want["n"] > 0
    assert row["ci_low"] == pytest.approx(want["ci_low"])


def _trained(data) -> nn.Module:
    ds = open_dataset(data / "data", split="test")
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    y = torch.tensor([int(ds[i]["label"]) for i in range(len(ds))])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def shortcut_audit(tmp_path_factory):
    """A small-cnn trained on a synthetic study whose marker goes with PNEUMONIA in train (p 0.95), with
    sites; the test split carries the marker on half the images whatever the label."""
    from medxai.pipeline.audit import run_audit

    raw = {"name": "shortcut", "data": {"synthetic": {"study": "cxr-pneumonia", "size": 32, "n_train": 200,
                                                      "n_val": 40, "n_test": 80, "shortcut": 0.95,
                                                      "options": {"sites": True}}},
           "models": [{"name": "std", "arch": "small-cnn", "train": {"epochs": 4, "batch_size": 32}}],
           "attack": {"n": 40, "eps": [0, "1/255"], "steps": 3},
           "corruption": {"n": 40, "names": ["gaussian_noise"], "severities": [1], "gallery": False},
           "explain": {"methods": ["saliency", "gradcam"], "n_show": 4, "n_score": 60},
           "score": {"metrics": ["energy_pointing_game", "deletion"], "sanity_n": 4, "n_boot": 200},
           "evaluation": {"n_boot": 100}, "subgroups": {"n_permutations": 100}}
    out = tmp_path_factory.mktemp("shortcut") / "run"
    return run_audit(load_config(raw), out, synthetic=True), out


def test_removing_the_marker_flips_the_shortcut_models_predictions(shortcut_audit):
    res, _ = shortcut_audit
    iv = res.report["intervention"]["models"]["std"]
    # measured: region 0.87 (CI 0.75-0.98), control 0.00, counterfactual 0.87 on 30 marked images
    assert iv["region"]["flip_rate"] >= 0.5 and iv["control"]["flip_rate"] <= 0.1
    assert iv["difference"]["flip_rate_ci"][0] > 0.2 and iv["counterfactual"]["flip_rate"] >= 0.5
    assert iv["region_source"] == "the data's shortcut masks"
    row = {r["dimension"]: r for r in res.report["scorecard"]["models"]["std"]["rows"]}["shortcut reliance"]
    assert row["status"] == "fail" and row["value"] == pytest.approx(iv["difference"]["flip_rate"])
    assert "shortcut reliance" in res.report["scorecard"]["models"]["std"]["verdict"]


def test_spray_separates_the_marker_driven_images(shortcut_audit):
    """The marker sits in the top-left or the top-right corner: SpRAy on Grad-CAM finds the unmarked
    images and each corner's images as their own clusters (measured: ARI 1.0, 3 clusters)."""
    from sklearn.metrics import adjusted_rand_score

    from medxai.data import SyntheticDataset

    res, _ = shortcut_audit
    dv = res.report["discovery"]["models"]["std"]
    assert dv["method"] == "gradcam"
    ds = SyntheticDataset("cxr-pneumonia", 80, size=32, split="test", shortcut=0.95, sites=True)

    def corner(item) -> int:
        m = item["shortcut_mask"][0].numpy()
        return 0 if not m.any() else 1 + int(np.argwhere(m)[:, 1].mean() >= m.shape[1] / 2)

    truth = {ds[i]["id"]: corner(ds[i]) for i in range(80)}
    ids = list(dv["labels"])
    assert adjusted_rand_score([truth[i] for i in ids], [dv["labels"][i] for i in ids]) >= 0.9
    assert dv["n_clusters"] == 3 and dv["png"]


def test_subgroups_and_model_card_come_from_the_report(shortcut_audit):
    res, out = shortcut_audit
    sg = res.report["subgroups"]["models"]["std"]
    assert set(sg["variables"]) == {"site", "sex", "age"} and sg["png"]
    card = json.loads((out / "model_card.json").read_text())["models"]["std"]
    assert card["metrics"] == res.report["models"]["std"]["metrics"]
    assert card["scorecard"] == res.report["scorecard"]["models"]["std"]["rows"]
    assert card["verdict"] == res.report["scorecard"]["models"]["std"]["verdict"]
    assert card["subgroups"]["variables"]["site"]["gap"] == sg["variables"]["site"]["gap"]
    md = (out / "model_card.md").read_text()
    auc = res.report["models"]["std"]["metrics"]["auc"]
    assert f"| auc | {auc['value']:.3f} | {auc['ci_low']:.3f} – {auc['ci_high']:.3f} |" in md
    assert "## Intended use" in md and "To be completed by the model's owner" in md
    html = (out / "report.html").read_text()
    for section in ('id="subgroups"', 'id="reliance"', 'id="discovery"', 'alt="SpRAy clusters of std"',
                    'alt="subgroup metrics of std"', 'alt="mean attribution map per class of std"'):
        assert section in html


def test_scorecard_and_discovery_panel_in_a_browser(shortcut_audit, browser):
    from selenium.webdriver.common.by import By

    res, out = shortcut_audit
    browser.get((out / "report.html").as_uri())
    first = browser.find_element(By.CSS_SELECTOR, "main section")
    assert first.get_attribute("id") == "scorecard" and first.is_displayed()
    rows = browser.find_elements(By.CSS_SELECTOR, "table.scorecard tr[data-dimension]")
    assert [r.get_attribute("data-dimension") for r in rows][:2] == ["discrimination", "calibration"]
    shortcut = browser.find_element(By.CSS_SELECTOR, "tr[data-dimension='shortcut reliance']")
    assert shortcut.get_attribute("data-status") == "fail" and "fail" in shortcut.text
    verdict = browser.find_element(By.CSS_SELECTOR, "p.verdict").text
    assert verdict == res.report["scorecard"]["models"]["std"]["verdict"]
    panel = browser.find_element(By.ID, "discovery")
    img = panel.find_element(By.CSS_SELECTOR, "img.fig")
    assert img.is_displayed() and browser.execute_script("return arguments[0].naturalWidth", img) > 100
    assert len(panel.find_elements(By.CSS_SELECTOR, "table.discovery tr")) == 1 + 3  # header + 3 clusters
    assert browser.find_element(By.ID, "reliance").find_element(By.CSS_SELECTOR, "table.intervention").is_displayed()
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
