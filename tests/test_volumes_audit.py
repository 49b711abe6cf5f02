"""The audit end to end on CT volumes (the synthetic ``ct-nodule`` study, examples/ct-nodule.yaml at
16^3 voxels): numbers against independent recomputations, the stages not run with their reasons,
the ``volumes`` dataset layout, and the report's slice viewer in a real browser."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch

EXAMPLE = Path(__file__).parents[1] / "examples" / "ct-nodule.yaml"
TINY = ["data.synthetic.size=16", "data.synthetic.n_train=48", "data.synthetic.n_val=16",
        "data.synthetic.n_test=16", "models.0.train.epochs=1", "evaluation.n_boot=20", "attack.n=16",
        "attack.steps=2", "attack.eps=[0, 2/255, 8/255]", "attack.autoattack.enabled=true",
        "attack.radius.enabled=true", "corruption.n=16", "corruption.names=[gaussian_noise, motion_blur]",
        "explain.methods=[saliency, integrated_gradients, gradcam, attention_rollout]", "explain.n_show=3",
        "explain.n_score=16",
        "explain.options.integrated_gradients.n_steps=4", "score.sanity_n=2", "score.n_boot=20"]


@pytest.fixture(scope="module")
def ct_run(tmp_path_factory):
    """``medxai audit --config examples/ct-nodule.yaml --synthetic`` at 16^3 voxels, 48/16/16 volumes, 1 epoch."""
    from medxai.cli import main

    out = tmp_path_factory.mktemp("ct") / "run"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main(["audit", "--config", str(EXAMPLE), "--synthetic", "--out", str(out),
              *[a for kv in TINY for a in ("--set", kv)]])
    finally:
        torch.set_num_threads(n)
    return out, json.loads((out / "report.json").read_text())


def _test_volumes(n: int = 16):
    from medxai.data.volumes import SyntheticVolumeDataset

    return SyntheticVolumeDataset("ct-nodule", n, size=16, seed=0, split="test", shortcut=0.9)


def _stage(out: Path, name: str) -> Path:
    (d,) = [p for p in (out / "stages" / name).iterdir() if not p.name.startswith(".")]
    return d


def test_metrics_and_attack_curve_match_the_trained_model(ct_run):
    from medxai.runs import load_run

    out, rep = ct_run
    assert rep["data"]["volumes"] and rep["data"]["splits"]["test"]["n"] == 16
    m = rep["models"]["cnn3d"]["metrics"]
    # independent: the trained checkpoint on the 16 test volumes, (16, 1, 16, 16, 16)
    model = load_run(_stage(out, "train/cnn3d") / "run")[0]
    ds = _test_volumes()
    x = torch.stack([ds[i]["image"] for i in range(16)])
    y = torch.as_tensor(ds.labels)
    with torch.no_grad():
        pred = model(x).argmax(1)
    assert x.shape == (16, 1, 16, 16, 16)
    assert m["accuracy"]["value"] == pytest.approx(float((pred == y).double().mean()), abs=1e-12)
    recall = [float((pred[y == c] == c).double().mean()) for c in (0, 1)]
    assert m["balanced_accuracy"]["value"] == pytest.approx(sum(recall) / 2, abs=1e-12)
    att = rep["robustness"]["attack"]["models"]["cnn3d"]
    # PGD on volumes: nothing fooled at eps 0, success never falls with eps, clean accuracy at eps 0
    assert att["success_rate"][0] == 0 and att["success_rate"] == sorted(att["success_rate"])
    assert all(0 <= v <= 1 for v in att["success_rate"])
    assert att["robust_accuracy"][0] == pytest.approx(m["accuracy"]["value"], abs=1e-12)
    assert att["n"] == int((pred == y).sum())


def test_scores_on_3d_masks_nan_without_a_nodule(ct_run):
    from safetensors.torch import load_file

    out, rep = ct_run
    summ = {(s["method"], s["metric"]): s for s in rep["scores"]["summary"]}
    ds = _test_volumes()
    no_nodule = int((ds.labels == 0).sum())
    assert 0 < no_nodule < 16
    for method in ("saliency", "integrated_gradients", "gradcam"):
        for metric in ("pointing_game", "energy_pointing_game"):
            s = summ[(method, metric)]
            # volumes without a nodule have an empty 3-D mask: NaN, never a hit or a miss
            assert s["n_nan"] == no_nodule and s["n"] == 16 - no_nodule and 0 <= s["mean"] <= 1
        assert 0 <= summ[(method, "sparseness")]["mean"] <= 1 and summ[(method, "sparseness")]["n"] == 16
        assert 0 <= summ[(method, "deletion")]["mean"] <= 1
    # energy pointing game (Wang et al. 2020, Score-CAM sec. 4.3): sum(relu(a) * mask) / sum(relu(a)),
    # recomputed per volume from the saved 3-D maps and the generator's nodule masks
    st = json.loads((_stage(out, "score/cnn3d/gradcam") / "result.json").read_text())
    maps = load_file(str(_stage(out, "explain/cnn3d/gradcam") / "maps.safetensors"))["maps"]
    assert maps.shape == (16, 1, 16, 16, 16)
    by_id = {ds[i]["id"]: ds[i]["mask"] for i in range(16)}
    for sid, v in zip(st["ids"], st["metrics"]["energy_pointing_game"]["values"], strict=True):
        mask = by_id[sid].double()
        a = maps[st["ids"].index(sid)].double().clamp_min(0)
        if not mask.any():
            assert v is None
        else:
            assert v == pytest.approx(float((a * mask).sum() / a.sum()), abs=1e-6)
    assert rep["shortcut"]["rows"] and all(0 <= r["share"] <= 1 for r in rep["shortcut"]["rows"])
    sanity = rep["sanity"][0]
    assert sanity["method"] == "saliency" and len(sanity["spearman"]) == len(sanity["layers"]) > 0
    assert -1 <= sanity["final_spearman"] <= 1


def test_stages_not_run_on_volumes_say_why(ct_run):
    out, rep = ct_run
    skipped = {s["stage"]: s["reason"] for s in rep["skipped"]}
    assert {"intervention", "discovery"} <= set(skipped) and not {"autoattack", "radius"} & set(skipped)
    assert "(B, C, H, W)" in skipped["intervention"]
    att = rep["robustness"]["attack"]["models"]["cnn3d"]  # AutoAttack and the radius run on volumes
    assert att["autoattack"]["attacks_ran"][0] == "apgd-ce"
    assert att["autoattack"]["robust_accuracy"] <= att["autoattack"]["clean_accuracy"]
    r = att["radius"]
    assert r["n_found"] + r["n_misclassified"] + r["n_not_found"] == r["n"]
    assert rep["intervention"]["reason"] == skipped["intervention"] and rep["discovery"]["models"] == {}
    # motion blur is 2-D only: left out of the table and named; gaussian noise (per voxel) takes volumes
    assert "motion_blur" in skipped["corruption/some"] and "gaussian_noise" not in skipped["corruption/some"]
    assert any("motion_blur" in why for why in rep["robustness"]["not_run"])
    cor = rep["robustness"]["corruption"]["models"]["cnn3d"]
    assert list(cor["drops"]) == ["gaussian_noise"] and all(-1 <= v <= 1 for v in cor["drops"]["gaussian_noise"])
    # the clean row is the balanced accuracy of the same 16 test volumes the evaluation stage scored
    assert cor["clean"] == pytest.approx(rep["models"]["cnn3d"]["metrics"]["balanced_accuracy"]["value"], abs=1e-12)
    # an explainer of 2-D images only is stated as unavailable, not run on the volumes
    (u,) = rep["explanations"]["unavailable"]
    assert (u["model"], u["method"]) == ("cnn3d", "attention_rollout") and "volumes" in u["reason"]
    assert not [s for s in rep["scores"]["summary"] if s["method"] == "attention_rollout"]
    html = (out / "report.html").read_text()
    assert "Stages not run" in html and "unavailable: cnn3d / attention_rollout" in html and "<script src" not in html
    assert html.count('class="vcell"') == 3


def test_rerun_reuses_every_volume_stage(ct_run):
    from medxai.pipeline.audit import run_audit
    from medxai.pipeline.config import load_config

    out, rep = ct_run
    again = run_audit(load_config(EXAMPLE, TINY), out, synthetic=True)
    assert again.stages and all(e["cached"] for e in again.stages), [e for e in again.stages if not e["cached"]]
    assert again.report["scores"]["summary"] == rep["scores"]["summary"]


def test_viewer_bytes_are_the_volumes_and_maps(ct_run):
    from safetensors.torch import load_file

    out, rep = ct_run
    xp = rep["explanations"]
    v = json.loads((out / xp["viewer"]).read_text())
    assert v["stride"] == [1, 1, 1] and len(v["volumes"]) == 3
    ds = _test_volumes()
    items = {ds[i]["id"]: ds[i] for i in range(16)}
    maps = load_file(str(_stage(out, "explain/cnn3d/saliency") / "maps.safetensors"))["maps"]
    ids = json.loads((_stage(out, "explain/cnn3d/saliency") / "result.json").read_text())["ids"]
    for i, vol in enumerate(v["volumes"]):
        it = items[vol["id"]]
        img = np.frombuffer(base64.b64decode(vol["image"]), np.uint8).reshape(vol["shape"])
        assert vol["shape"] == [16, 16, 16]
        np.testing.assert_array_equal(img, (it["image"][0].numpy() * 255).round().astype(np.uint8))
        if it["mask"].any():
            mk = np.frombuffer(base64.b64decode(vol["mask"]), np.uint8).reshape(vol["shape"])
            np.testing.assert_array_equal(mk.astype(bool), it["mask"][0].numpy())
            assert it["mask"][0, vol["start"]].any()  # the viewer opens on a slice through the nodule
        else:
            assert vol["mask"] is None
        q = np.frombuffer(base64.b64decode(v["maps"]["cnn3d|saliency"][i]), np.uint8).reshape(vol["shape"])
        ref = (maps[ids.index(vol["id"]), 0] / xp["scales"]["saliency"]).clamp(0, 1) * 255
        assert np.abs(q.astype(int) - ref.round().numpy().astype(int)).max() <= 1


def test_pgd_on_volumes_stays_in_budget_and_batches_like_single():
    """PGD (Madry et al. 2018, eq. 2) on (B, C, D, H, W): ||x_adv - x||_inf <= eps, x_adv in [0, 1],
    and each volume's result independent of its batch (seeded per sample)."""
    from medxai.attacks import PGD
    from medxai.models import create

    torch.manual_seed(0)
    model = create("small-cnn3d", 2, in_chans=1).eval()
    x, y = torch.rand(3, 1, 8, 12, 12), torch.tensor([0, 1, 1])
    eps = 4 / 255
    adv = PGD(model, eps=eps, steps=3, norm="linf", random_start=False)(x, y)
    assert adv.shape == x.shape and float((adv - x).abs().max()) <= eps + 1e-6
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1 and not torch.equal(adv, x)
    one = PGD(model, eps=eps, steps=3, norm="linf", random_start=False)(x[1:2], y[1:2])
    torch.testing.assert_close(one, adv[1:2], atol=1e-6, rtol=0)


def test_volumes_layout_spec_audits_the_same_volumes(tmp_path):
    """A ``volumes`` dataset written by ``medxai data synth`` audits as real data, same volumes as the generator."""
    from medxai.data.volumes import SyntheticVolumeDataset, write_synthetic_volumes
    from medxai.pipeline.audit import run_audit
    from medxai.pipeline.config import load_config

    write_synthetic_volumes("ct-nodule", tmp_path / "ct", {"train": 12, "val": 4, "test": 6}, size=16, seed=3)
    raw = {"name": "ct-layout", "data": {"spec": str(tmp_path / "ct"), "use": "real"},
           "models": [{"name": "m", "arch": "small-cnn3d", "train": {"epochs": 1, "batch_size": 8}}],
           "evaluation": {"n_boot": 10}, "attack": {"eps": [0, "4/255"], "steps": 1, "n": 6},
           "corruption": {"enabled": False}, "explain": {"methods": ["saliency"], "n_show": 2, "n_score": 6},
           "score": {"metrics": ["energy_pointing_game"], "sanity": False, "n_boot": 10},
           "intervention": {"enabled": False}, "discovery": {"enabled": False}}
    res = run_audit(load_config(raw), tmp_path / "run")
    rep = res.report
    assert rep["data"]["volumes"] and rep["data"]["splits"]["test"]["n"] == 6
    ref = SyntheticVolumeDataset("ct-nodule", 6, size=16, seed=3, split="test")
    epg = next(s for s in rep["scores"]["summary"] if s["metric"] == "energy_pointing_game")
    assert epg["n_nan"] == int((ref.labels == 0).sum()) and epg["n"] + epg["n_nan"] == 6
    viewer = json.loads((tmp_path / "run" / rep["explanations"]["viewer"]).read_text())
    by_id = {Path(ref[i]["id"]).name: ref[i]["image"][0] for i in range(6)}
    for vol in viewer["volumes"]:
        img = np.frombuffer(base64.b64decode(vol["image"]), np.uint8).reshape(vol["shape"])
        np.testing.assert_array_equal(img, (by_id[Path(vol["id"]).name].numpy() * 255).round().astype(np.uint8))


def test_slice_viewer_in_browser(ct_run, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    out, _ = ct_run
    browser.get((out / "report.html").as_uri())
    grid = browser.find_element(By.ID, "vgrid")
    browser.execute_script("arguments[0].scrollIntoView()", grid)
    canvas = browser.find_elements(By.CSS_SELECTOR, "#vgrid canvas.vcanvas")[0]
    pos = browser.find_elements(By.CSS_SELECTOR, "#vgrid .vpos")[0]
    before, text = canvas.screenshot_as_png, pos.text
    slider = browser.find_elements(By.CSS_SELECTOR, "#vgrid input.vslice")[0]
    k = int(slider.get_attribute("value"))
    browser.execute_script("arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'))",
                           slider, (k + 5) % 16)
    assert canvas.screenshot_as_png != before and pos.text != text and pos.text.startswith("axial slice")
    mid = canvas.screenshot_as_png
    Select(browser.find_element(By.ID, "ctl-plane")).select_by_value("sagittal")
    assert canvas.screenshot_as_png != mid and pos.text.startswith("sagittal slice")
    plane = canvas.screenshot_as_png
    Select(browser.find_element(By.ID, "ctl-method")).select_by_value("gradcam")
    assert canvas.screenshot_as_png != plane
    opaque = canvas.screenshot_as_png
    browser.execute_script("var o = document.getElementById('ctl-opacity'); o.value = 0;"
                           "o.dispatchEvent(new Event('input'))")
    assert canvas.screenshot_as_png != opaque
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
