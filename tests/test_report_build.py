"""The HTML report: self-contained, escaped, its controls work in a real browser."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from medxai.errors import DataError
from medxai.report import build_report

HOSTILE = "<script>alert(1)</script>"
HOSTILE_IMG = "<img src=x onerror=window.__pwned=1>"


def _run_dir(tmp_path):
    run = tmp_path / "run"
    for i in range(2):
        Image.fromarray(np.full((16, 16), 80 * i, np.uint8)).save(_mk(run / f"x/img{i}.png"))
        for model, method, colour in (("standard", "saliency", 200), ("robust", "saliency", 60),
                                      ("standard", "gradcam", 120), ("robust", "gradcam", 30)):
            arr = np.zeros((16, 16, 4), np.uint8)
            arr[..., 0], arr[..., 3] = colour, 255
            Image.fromarray(arr).save(_mk(run / f"x/{model}-{method}-{i}.png"))
    report = {
        "title": f"audit of {HOSTILE}",
        "subtitle": f"file ../../etc/passwd \"quoted\" {HOSTILE_IMG}",
        "findings": [{"text": f"class {HOSTILE} is predicted from the marker"}],
        "data": {"description": "synthetic", "class_names": ["NORMAL", HOSTILE],
                 "splits": {"test": {"n": 3, "counts": {"NORMAL": 1, HOSTILE: 2}}}},
        "models": {"standard": {"arch": "small-cnn", "objective": "standard",
                                "metrics": {"balanced_accuracy": {"value": 0.91, "ci_low": 0.85, "ci_high": 0.95}},
                                "history": [{"epoch": 0, "train_loss": 0.7, "val_loss": 0.6},
                                            {"epoch": 1, "train_loss": 0.4, "val_loss": 0.45}],
                                "confusion": {"labels": ["NORMAL", HOSTILE], "matrix": [[1, 0], [0, 2]]}}},
        "robustness": {"attack": {"norm": "linf", "steps": 5, "eps_labels": ["0", "1/255"],
                                  "models": {"standard": {"success_rate": [0.0, 0.5],
                                                          "robust_accuracy": [1.0, 0.5]}}}},
        "explanations": {
            "methods": ["saliency", "gradcam"], "models": ["standard", "robust"], "output": "logit",
            "images": [{"id": f"img{i}", "label": HOSTILE, "png": f"x/img{i}.png"} for i in range(2)],
            "overlays": {f"{mo}|{me}": [f"x/{mo}-{me}-{i}.png" for i in range(2)]
                         for mo in ("standard", "robust") for me in ("saliency", "gradcam")},
        },
    }
    (run / "report.json").write_text(json.dumps(report))
    return run


def _mk(p):
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def test_report_is_self_contained_and_escaped(tmp_path):
    run = _run_dir(tmp_path)
    html = build_report(run).read_text()
    assert HOSTILE not in html and HOSTILE_IMG not in html  # every occurrence escaped
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert not re.search(r"""(src|href)=["'](https?:)?//""", html)  # nothing external
    assert "0.910" in html and "[0.850, 0.950]" in html  # numbers from report.json


def test_report_refuses_assets_outside_the_run(tmp_path):
    run = _run_dir(tmp_path)
    rj = json.loads((run / "report.json").read_text())
    rj["explanations"]["images"][0]["png"] = "../../outside.png"
    (tmp_path / "outside.png").write_bytes((run / "x/img0.png").read_bytes())
    (run / "report.json").write_text(json.dumps(rj))
    with pytest.raises(DataError, match="leaves the run directory"):
        build_report(run)


def test_report_in_browser_controls_and_no_script_runs(tmp_path, browser):
    run = _run_dir(tmp_path)
    path = build_report(run)
    browser.get(path.as_uri())
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    assert browser.execute_script("return typeof window.__pwned") == "undefined"
    body = browser.find_element(By.TAG_NAME, "body").text
    assert HOSTILE in body and HOSTILE_IMG in body  # shown as text
    for section in ("Findings", "Data", "Models", "Robustness", "Explanations"):
        assert browser.find_element(By.XPATH, f"//h2[contains(., '{section}')]").is_displayed()
    grid = browser.find_element(By.ID, "xgrid")
    first = grid.screenshot_as_png
    src_before = browser.execute_script("return document.querySelector('#xgrid img.ovl').src")
    Select(browser.find_element(By.ID, "ctl-model")).select_by_value("robust")
    src_after = browser.execute_script("return document.querySelector('#xgrid img.ovl').src")
    assert src_before != src_after and src_after.startswith("data:image/png")
    assert grid.screenshot_as_png != first
    browser.execute_script("var o=document.getElementById('ctl-opacity'); o.value=10;"
                           "o.dispatchEvent(new Event('input'));")
    assert browser.execute_script("return document.querySelector('#xgrid img.ovl').style.opacity") == "0.1"
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
