"""Hostile names from a dataset on disk (class labels, file names, ids with ``<script>``, quotes,
``../``) through a real audit into the report: shown as text in a real browser, nothing runs,
nothing external is loaded, and nothing is written outside the chosen output folder."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from medxai.pipeline.audit import run_audit
from medxai.pipeline.config import load_config

SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=window.__pwned=1>"
CLASSES = [f"ok {SCRIPT}", f"quoted \"a\" 'b' & {IMG}"]
# file names (a Linux name holds no '/', so </script> spans a folder and a file)
NAMES = [f"{SCRIPT}.png", f"{IMG}.png", "quote\"d'.png", "sub/../dots.png", "plain.png"]


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def hostile_audit(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    data = base / "data"
    rng = np.random.default_rng(0)
    rows = ["image,label,split"]
    for i in range(48):
        label = i % 2
        name = NAMES[i % len(NAMES)]
        stem, suffix = name.rsplit(".", 1)
        rel = f"{stem}-{i}.{suffix}"
        img = (rng.random((32, 32)) * 90).astype(np.uint8)
        img[4 + 16 * label:12 + 16 * label, 10:20] = 250
        path = data / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path)
        split = "train" if i < 32 else "val" if i < 40 else "test"
        quoted = '"' + rel.replace('"', '""') + '"'
        rows.append(f'{quoted},"{CLASSES[label].replace(chr(34), chr(34) * 2)}",{split}')
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    cfg = load_config({
        "name": f"audit {SCRIPT}",
        "data": {"spec": {"layout": "csv", "root": str(data), "csv": "labels.csv", "classes": CLASSES}, "size": 32},
        "models": [{"name": "m", "arch": "small-cnn", "train": {"epochs": 1, "batch_size": 16}}],
        "evaluation": {"n_boot": 10},
        "attack": {"eps": [0, "1/255"], "steps": 1, "n": 8},
        "corruption": {"enabled": False},
        "explain": {"methods": ["saliency"], "n_show": 8, "n_score": 8},
        "score": {"metrics": ["sparseness"], "sanity": False, "shortcut": False, "n_boot": 10},
    })
    before = _tree(base)
    out = base / "out"
    res = run_audit(cfg, out)
    return base, before, out, res


def test_hostile_names_are_escaped_in_the_html(hostile_audit):
    base, before, out, res = hostile_audit
    ids = [img["id"] for img in res.report["explanations"]["images"]]
    assert any(SCRIPT in i for i in ids) and any(IMG in i for i in ids) and any("quote\"d'" in i for i in ids)
    assert any("sub/../dots" in i for i in ids)
    assert res.report["data"]["class_names"] == CLASSES
    html = res.report_html.read_text()
    assert SCRIPT not in html and IMG not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert len(re.findall(r"<script\b", html)) == 2  # the report's own: the maps' JSON and the controls
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing external
    # nothing outside the output folder was written or changed
    assert _tree(base) == sorted(before + [str(p.relative_to(base)) for p in [out, *out.rglob("*")]])


def test_hostile_names_show_as_text_in_the_browser_and_run_nothing(hostile_audit, browser):
    from selenium.webdriver.common.by import By

    _, _, out, _ = hostile_audit
    browser.get((out / "report.html").as_uri())
    # an alert() would be open now and make the next command raise UnexpectedAlertPresentException
    assert browser.execute_script("return typeof window.__pwned") == "undefined"
    body = browser.find_element(By.TAG_NAME, "body").text
    for s in (SCRIPT, IMG, *CLASSES, f"audit {SCRIPT}", "quote\"d'", "sub/../dots"):
        assert s in body, s
    # the page's elements are only the report's own: no injected script or img element
    n_img = browser.execute_script("return document.images.length")
    expected = len(browser.find_elements(By.CSS_SELECTOR, "img.fig, #xgrid img"))
    assert n_img == expected
    assert browser.execute_script("return document.scripts.length") == 2
    assert all(not s.get_attribute("src") for s in browser.find_elements(By.TAG_NAME, "script"))
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
