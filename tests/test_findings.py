"""``python -m benchmarks.findings``: the verdict rule, the unpaired-rate CI, the markdown generator,
and two studies' quick mode end to end (results JSON and generated markdown agree)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from benchmarks.findings import STUDIES, _common, study_module
from benchmarks.findings.__main__ import main

# -- the verdict rule ------------------------------------------------------------------------


@pytest.mark.parametrize("lo,hi,direction,p,n,sided,want", [
    (0.1, 0.3, "higher", 0.001, 50, "two-sided", "shown"),
    (-0.3, -0.1, "lower", 0.001, 50, "two-sided", "shown"),
    (-0.3, -0.1, "higher", 0.001, 50, "two-sided", "refuted"),
    (0.1, 0.3, "lower", 0.001, 50, "two-sided", "refuted"),
    (-0.1, 0.3, "higher", 0.2, 50, "two-sided", "not shown"),
    (-0.1, 0.3, "lower", 0.2, 50, "two-sided", "not shown"),
    (0.0, 0.3, "higher", 0.01, 50, "two-sided", "not shown"),   # touching zero does not exclude it
    (0.01, 0.3, "higher", 0.2, 8, "two-sided", "not shown"),    # CI excludes 0, the test does not agree
    (-0.3, -0.01, "higher", 0.2, 8, "two-sided", "not shown"),  # opposite, but the two-sided test disagrees
    (-0.3, -0.01, "higher", 0.9, 8, "one-sided", "refuted"),    # a one-sided p cannot speak for the other side
    (0.01, 0.3, "higher", 0.04, 8, "one-sided", "shown"),
    (float("nan"), 0.3, "higher", 0.01, 50, "two-sided", "undetermined"),
    (0.1, 0.3, "higher", None, 50, "two-sided", "undetermined"),
    (0.1, 0.3, "higher", 0.01, 0, "two-sided", "undetermined"),
    (None, None, "lower", None, None, "two-sided", "undetermined"),
])
def test_verdict_rule(lo, hi, direction, p, n, sided, want):
    assert _common.verdict(lo, hi, direction, p, n, sided=sided) == want


def test_verdict_refuses_bad_input():
    with pytest.raises(ValueError, match="direction"):
        _common.verdict(0.1, 0.2, "up", 0.01, 5)
    with pytest.raises(ValueError, match="exceeds"):
        _common.verdict(0.3, 0.1, "higher", 0.01, 5)


def test_claims_from_constructed_paired_comparisons():
    """medxai.metrics.compare on constructed paired scores -> the three numeric verdicts."""
    rng = np.random.default_rng(0)
    b = rng.random(60)
    noise = rng.normal(0, 0.05, 60)
    cases = {"shown": b + 0.2 + noise, "refuted": b - 0.2 + noise, "not shown": b + noise - noise.mean()}
    for want, a in cases.items():
        cmp = _common.paired(dict(enumerate(a)), dict(enumerate(b)), n_boot=500)
        c = _common.claim("x", "words", "tested", "higher", cmp, "src")
        assert c["verdict"] == want
        assert c["n"] == 60 and c["effect"] == pytest.approx(float(np.mean(a - b)))
    # NaN pairs are dropped; nothing paired -> undetermined with a reason
    c = _common.claim("y", "w", "t", "higher", None, "src", reason="no pairs")
    assert c["verdict"] == "undetermined" and c["reason"] == "no pairs"


def test_two_proportions_matches_newcombe_1998():
    """Newcombe (1998), Stat Med 17:873, Table II example (c): 56/70 - 48/80, method 10 (hybrid score):
    0.0524 to 0.3339; pooled z-test by hand."""
    r = _common.two_proportions(56, 70, 48, 80)
    assert r["mean_diff"] == pytest.approx(0.2)
    assert r["ci_low"] == pytest.approx(0.0524, abs=1e-4) and r["ci_high"] == pytest.approx(0.3339, abs=1e-4)
    from scipy.stats import norm

    pool = 104 / 150
    z = 0.2 / math.sqrt(pool * (1 - pool) * (1 / 70 + 1 / 80))
    assert r["p_value"] == pytest.approx(2 * norm.sf(z))


def test_paired_bootstrap_of_a_constant_difference():
    d = np.full(30, 0.25)
    r = _common.paired_bootstrap(lambda i: float(d[i].mean()), 30, n_boot=200)
    assert r["mean_diff"] == pytest.approx(0.25) and r["ci_low"] == pytest.approx(0.25)
    assert r["ci_high"] == pytest.approx(0.25) and r["p_value"] == pytest.approx(2 / 201)


# -- the markdown generator --------------------------------------------------------------------


def _result(study: str, seconds: float, verdicts: list[str]) -> dict:
    claims = [{"id": f"c{i}", "claim": "the study's words", "tested": "a > b", "direction": "higher",
               "effect": 0.1 * i, "ci_low": 0.01, "ci_high": 0.2, "p_value": 0.01, "n": 10 + i, "verdict": v}
              for i, v in enumerate(verdicts)]
    return {"study": study, "title": f"title of {study}", "quick": False, "seconds": seconds, "date": "2026-01-01",
            "size": "48 px", "claims": claims,
            "tables": [{"title": "T", "columns": ["a", "b"], "rows": [["1", "2"]]}]}


def test_markdown_has_a_section_per_study_with_its_run_time(tmp_path):
    for r in (_result("001_b", 123.4, ["shown", "not shown"]), _result("000_a", 7.0, ["refuted"])):
        _common.write_result(r, tmp_path)
    doc = _common.write_doc(tmp_path, tmp_path / "findings.md").read_text()
    heads = re.findall(r"^## (\S+): ", doc, flags=re.M)
    assert heads == ["000_a", "001_b"]
    sec = {h: doc.split(f"## {h}: ")[1].split("\n## ")[0] for h in heads}
    assert "Run time: 123 s" in sec["001_b"] and "Run time: 7 s" in sec["000_a"]
    assert "Verdicts: shown 1, not shown 1, refuted 0, undetermined 0." in sec["001_b"]
    assert "| c1 | the study's words | a > b | 0.1 | 0.01 to 0.2 | 0.01 | 11 | not shown |" in sec["001_b"]


# -- quick mode end to end -----------------------------------------------------------------------


def _table_rows(section: str) -> dict[str, list[str]]:
    """The claims table's rows by id (the table under the ``| id | claim`` header, up to a blank line)."""
    rows = {}
    body = section.split("| id | claim (the study's words) |", 1)[1].split("\n\n", 1)[0]
    for line in body.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 8, line
        rows[cells[0]] = cells
    return rows


@pytest.mark.parametrize("study", ["pneumonia", "fundus"])
def test_quick_study_writes_results_that_the_markdown_states(study, tmp_path):
    assert main(["--quick", "--only", study, "--results", str(tmp_path), "--doc", str(tmp_path / "f.md")]) == 0
    key = study_module(study).STUDY
    res = json.loads((tmp_path / f"{key}.json").read_text())
    assert res["study"] == key and res["quick"] is True and res["seconds"] > 0 and res["claims"]
    for c in res["claims"]:
        assert c["verdict"] in _common.VERDICTS and c["claim"] and c["tested"]
        if c["verdict"] in ("shown", "refuted"):
            assert all(c[k] is not None for k in ("ci_low", "ci_high", "p_value", "n")) and c["test"]
        if c["verdict"] == "shown":  # the rule, re-checked from the stored numbers
            assert (c["ci_low"] > 0 if c["direction"] == "higher" else c["ci_high"] < 0) and c["p_value"] < 0.05
        if "reason" in c:  # not measured, or a model at chance: never judged
            assert c["verdict"] == "undetermined"
        else:
            assert c["verdict"] == _common.verdict(c["ci_low"], c["ci_high"], c["direction"], c["p_value"], c["n"],
                                                   sided=c["sided"])
    if study == "pneumonia":  # at this size the model learns the marker: the shortcut claims are shown
        verdicts = {c["id"]: c["verdict"] for c in res["claims"]}
        assert verdicts["marker-reliance"] == "shown" and verdicts["gradcam-marker"] == "shown"
    doc = (tmp_path / "f.md").read_text()
    section = doc.split(f"## {key}: ")[1]
    assert f"Run time: {res['seconds']:.0f} s" in section
    rows = _table_rows(section)
    assert set(rows) == {c["id"] for c in res["claims"]}
    for c in res["claims"]:
        r = rows[c["id"]]
        assert r[7].strip("*") == c["verdict"]
        assert r[6] == (str(c["n"]) if c["n"] is not None else "n/a")
        if c["effect"] is None:
            assert r[3] == "n/a"
        else:
            assert float(r[3]) == pytest.approx(c["effect"], rel=5e-3, abs=1e-12)
        if c["ci_low"] is not None:
            lo, hi = (float(x) for x in r[4].split(" to "))
            assert lo == pytest.approx(c["ci_low"], rel=5e-3, abs=1e-12)
            assert hi == pytest.approx(c["ci_high"], rel=5e-3, abs=1e-12)


def test_every_study_is_registered_with_a_runner():
    for key in STUDIES:
        mod = study_module(key)
        assert mod.STUDY == key and callable(mod.run) and set(mod.SIZE) == {True, False}
    with pytest.raises(KeyError, match="unknown study"):
        study_module("nope")


# -- the synthetic data the studies need (box masks, co-occurrence) ----------------------------------


def test_cxr_pneumonia_box_masks_are_the_lesion_parts_bounding_boxes():
    from scipy import ndimage

    from medxai.data.synthetic import generate

    plain = generate("cxr-pneumonia", 10, size=32, seed=3, shortcut=0.9)
    box = generate("cxr-pneumonia", 10, size=32, seed=3, shortcut=0.9, masks="box")
    assert np.array_equal(plain.images, box.images) and np.array_equal(plain.labels, box.labels)
    assert "masks" not in plain.options and box.options["masks"] == "box"
    assert plain.labels.sum() >= 3
    for les, bx, sc in zip(plain.masks, box.masks, box.shortcut_masks, strict=True):
        assert not (bx & sc).any() and (les <= bx).all() and (les.any() == bx.any())
        lab, k = ndimage.label(les, structure=np.ones((3, 3), bool))
        want = np.zeros_like(les)
        for j in range(1, k + 1):  # each part's smallest enclosing rectangle, from its pixel coordinates
            ys, xs = np.nonzero(lab == j)
            want[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
        assert np.array_equal(bx, want & ~sc)
    with pytest.raises(Exception, match="masks must be"):
        generate("cxr-pneumonia", 1, size=16, masks="boxes")


def test_cxr_multilabel_findings_co_occur_independently():
    """P(i and j) = prevalence_i * prevalence_j (docs/synthetic.md), on 4000 label draws; the label
    stream read here is the one the renderer draws (checked on rendered images)."""
    from medxai._util.seed import derive_seed
    from medxai.data.synthetic import generate
    from medxai.data.synthetic._api import LABEL, Context, _check_args, _resolve
    from medxai.data.synthetic.cxr import DEFAULT_PREVALENCE, _labels

    spec = _check_args("cxr-multilabel", 16, 0, "train", None)
    opts = _resolve(spec, {"uncertain_share": 0.0})

    def truth(i: int) -> np.ndarray:
        ctx = Context(size=16, label=None, options=opts, base_seed=derive_seed(spec.name, 0, "train", i), lesions=True)
        return _labels(ctx.stream(LABEL), opts)[1]

    rendered = generate("cxr-multilabel", 6, size=32, seed=0, uncertain_share=0.0)
    assert np.array_equal(rendered.labels, np.stack([truth(i) for i in range(6)]).astype(np.float32))
    t = np.stack([truth(i) for i in range(4000)]).astype(float)
    p = np.array(DEFAULT_PREVALENCE)
    pair = t.T @ t / len(t)
    se = np.sqrt(np.outer(p, p) * (1 - np.outer(p, p)) / len(t))
    off = ~np.eye(5, dtype=bool)
    assert np.all(np.abs(pair - np.outer(p, p))[off] < 4 * se[off])
    assert abs((t.sum(1) == 0).mean() - np.prod(1 - p)) < 0.03
