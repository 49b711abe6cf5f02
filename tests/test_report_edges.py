"""The report's rough edges: what each map explains, why a comparison has no pair, the sanity plot's
axis and gaps, an audit without robustness, readable heat-map text, whole epochs, the gallery's
labels, the data description; and two CLI conventions: -q hides progress only, -o on every writer."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from medxai.pipeline.cache import StageResult
from medxai.pipeline.config import load_config
from medxai.pipeline.data import EvalSample

TINY_ML = {
    "name": "tiny-ml", "seed": 0,
    "data": {"synthetic": {"study": "cxr-multilabel", "size": 32, "n_train": 64, "n_val": 16, "n_test": 16}},
    "models": [{"name": "m", "arch": "small-cnn", "train": {"epochs": 1, "batch_size": 32}}],
    "evaluation": {"n_boot": 10},
    "attack": {"enabled": False}, "corruption": {"enabled": False},
    "intervention": {"enabled": False}, "discovery": {"enabled": False}, "subgroups": {"enabled": False},
    "explain": {"methods": ["saliency"], "output": "sigmoid", "top_k": 2, "n_show": 2, "n_score": 4},
    "score": {"metrics": ["pointing_game"], "sanity_methods": ["saliency"], "sanity_n": 2, "n_boot": 10},
}


def _invoke(args: list[str]) -> str:
    """Run the CLI in-process; returns what it printed on stdout."""
    from medxai.cli import _load_commands
    from medxai.cli._app import app

    _load_commands()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        app(args=args, standalone_mode=False)
    return buf.getvalue()


@pytest.fixture(scope="module")
def ml_run(tmp_path_factory):
    """A tiny multilabel audit (top_k 2, attacks and corruptions off) run as ``medxai -q audit``."""
    root = tmp_path_factory.mktemp("edges")
    cfg = root / "ml.yaml"
    cfg.write_text(yaml.safe_dump(TINY_ML))
    out = root / "run"
    printed = _invoke(["-q", "audit", "--config", str(cfg), "--synthetic", "-o", str(out)])
    return out, printed, json.loads((out / "report.json").read_text())


# ---------------------------------------------------------------- 1. what each map explains
def test_top_k_captions_name_each_maps_finding_from_the_saved_targets(ml_run):
    from safetensors.torch import load_file

    out, _, rep = ml_run
    xp = rep["explanations"]
    names = rep["data"]["class_names"]
    st_dir = next((out / "stages" / "explain").rglob("maps.safetensors"))
    saved = load_file(str(st_dir))
    targets, probs = saved["targets"], saved["probs"]
    assert targets.ndim == 2 and targets.shape[1] == 2 and probs.shape == (len(targets), len(names))
    assert xp["top_k"] == 2 and [img["rank"] for img in xp["images"]] == [1, 2, 1, 2]
    caps = xp["captions"]["m|saliency"]
    assert len(caps) == len(xp["overlays"]["m|saliency"]) == len(xp["images"]) == 4
    for c, (i, r) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        top = [names[int(k)] for k in targets[i]]
        p = float(probs[i, int(targets[i, r])])
        assert caps[c] == f"top-2 most probable: {', '.join(top)} · explains: {top[r]} (rank {r + 1}) (p {p:.2f})"
    html = (out / "report.html").read_text()
    assert "explains: " + names[int(targets[0, 0])] in html  # rendered before any script runs


def _explain_one(tmp_path: Path, target: str, probs: torch.Tensor | None = None) -> dict:
    from safetensors.torch import save_file

    from medxai.pipeline.report_data import _explanation_section

    cfg = load_config({"name": "t", "data": {"synthetic": {"study": "cxr-pneumonia"}},
                       "models": [{"name": "m", "arch": "small-cnn"}],
                       "explain": {"methods": ["saliency"], "n_show": 2, "target": target}})
    d = tmp_path / target / "stage"
    d.mkdir(parents=True)
    saved = {"maps": torch.rand(3, 1, 8, 8), "targets": torch.tensor([1, 0, 1])}
    save_file({**saved, **({"probs": probs} if probs is not None else {})}, str(d / "maps.safetensors"))
    sample = EvalSample(torch.rand(3, 1, 8, 8), torch.tensor([0, 0, 1]), ["a", "b", "c"])
    st = StageResult("explain/m/saliency", "k", d, {}, False, 0.0)
    return _explanation_section(cfg, tmp_path / target, {("m", "saliency"): st}, sample, ["m"], ["saliency"],
                                ["NORMAL", "PNEUMONIA"], "binary")


def test_single_label_captions_say_label_prediction_and_what_is_explained(tmp_path):
    pred = _explain_one(tmp_path, "predicted")
    assert [img["label"] for img in pred["images"]] == ["NORMAL", "NORMAL"]
    assert pred["captions"]["m|saliency"] == ["predicted: PNEUMONIA · explains: PNEUMONIA",
                                              "predicted: NORMAL · explains: NORMAL"]
    assert pred["top_k"] is None and len(pred["overlays"]["m|saliency"]) == 2
    lab = _explain_one(tmp_path, "label")
    assert lab["captions"]["m|saliency"][0] == "explains: PNEUMONIA (the label; prediction not recorded)"


def test_captions_show_the_probabilities_the_explain_stage_recorded(tmp_path):
    probs = torch.tensor([[0.2, 0.8], [0.9, 0.1], [0.35, 0.65]])
    pred = _explain_one(tmp_path, "predicted", probs)
    assert pred["captions"]["m|saliency"] == ["predicted: PNEUMONIA (p 0.80) · explains: PNEUMONIA",
                                              "predicted: NORMAL (p 0.90) · explains: NORMAL"]
    lab = _explain_one(tmp_path / "l", "label", torch.tensor([[0.7, 0.3], [0.9, 0.1], [0.35, 0.65]]))
    assert lab["captions"]["m|saliency"][0] == "predicted: NORMAL (p 0.70) · explains: PNEUMONIA (the label) (p 0.30)"


# ---------------------------------------------------------------- 2. comparisons without a pair
def test_comparison_with_no_pair_says_why(tmp_path):
    from medxai.pipeline.report_data import _comparisons
    from medxai.report import build_report

    cfg = load_config({"name": "t", "data": {"synthetic": {"study": "cxr-pneumonia"}},
                       "models": [{"name": "a", "arch": "small-cnn"}, {"name": "b", "arch": "small-cnn"}],
                       "score": {"n_boot": 10}})
    nan = float("nan")
    by_key = {("b", "saliency", "pointing_game"): {"i0": 1.0, "i1": 0.0, "i2": nan},
              ("a", "saliency", "pointing_game"): {"i0": nan, "i1": nan, "i2": nan}}
    rows = _comparisons(cfg, by_key, {"pointing_game": True}, ["a", "b"], ["saliency"])
    (row,) = rows
    assert row["n"] == 0 and row["n_dropped"] == 3
    assert row["a"] == "b" and row["b"] == "a"  # default: the second model against the first
    assert row["reason"].startswith("no image has a value for both: of 3 shared images, 1 with no value for either")
    assert "2 with a value only for b, 0 only for a" in row["reason"]
    run = tmp_path / "run"
    run.mkdir()
    report = {"title": "t", "data": {"class_names": [], "splits": {}}, "models": {}, "robustness": {},
              "scores": {"summary": [{"model": "a", "method": "saliency", "metric": "pointing_game", "mean": nan,
                                      "n": 0, "n_nan": 3}], "comparisons": rows}}
    (run / "report.json").write_text(json.dumps(report))
    html = build_report(run).read_text()
    assert "3 dropped: no image has a value for both" in html


# ---------------------------------------------------------------- 3. the sanity plot
def _capture(monkeypatch) -> list:
    from medxai.report import build

    figs: list = []
    monkeypatch.setattr(build, "_fig_uri", lambda fig: figs.append(fig) or "data:image/png;base64,")
    return figs


def test_sanity_plot_names_its_axis_and_marks_undefined_steps(monkeypatch):
    from medxai.report import build

    figs = _capture(monkeypatch)
    build._sanity_figure([{"model": "m", "method": "saliency", "layers": ["fc", "conv2", "conv1"],
                           "spearman": [0.8, None, -0.1]}])
    ax = figs[0].axes[0]
    label = ax.get_ylabel().replace("\n", " ")
    assert label == "Spearman rank correlation of |map| with the original" and "|a|" not in label
    markers = [ln for ln in ax.get_lines() if list(ln.get_xdata()) == [1]]
    assert markers and list(markers[0].get_ydata()) == [0.0] and markers[0].get_markerfacecolor() == "none"
    assert "no value at this step (undefined)" in [t.get_text() for t in ax.get_legend().get_texts()]


# ---------------------------------------------------------------- 4. robustness off, wrapping, heat map, epochs
def test_no_robustness_says_not_run_and_long_ids_wrap(ml_run):
    out, _, rep = ml_run
    assert rep["robustness"] == {"reason": "attack.enabled and corruption.enabled are false"}
    html = (out / "report.html").read_text()
    assert "Not run: attack.enabled and corruption.enabled are false." in html
    assert "td,th,.cap,.explains{overflow-wrap:anywhere}" in html


def test_heat_map_text_is_white_on_dark_cells_and_black_on_light(monkeypatch):
    from medxai.report import build

    assert build.text_colour((0.4, 0.0, 0.05, 1)) == "white" and build.text_colour((0.97, 0.97, 0.97, 1)) == "black"
    figs = _capture(monkeypatch)
    build._corruption_figure({"metric": "auc", "severities": [1, 2, 3],
                              "models": {"m": {"drops": {"noise": [0.01, -0.5, 0.5]}}}})
    colours = {t.get_text(): t.get_color() for t in figs[0].axes[0].texts}
    assert colours == {"+0.01": "black", "-0.50": "white", "+0.50": "white"}


def test_learning_curves_tick_whole_epochs(monkeypatch):
    from medxai.report import build

    figs = _capture(monkeypatch)
    build._model_figure({"history": [{"epoch": e, "train_loss": 1 / (e + 1), "val_loss": None} for e in range(3)]})
    ax = figs[0].axes[0]
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_gallery_labels_sit_closer_to_their_own_image(tmp_path):
    from medxai.corruptions import example_fundus, gallery

    p = gallery(example_fundus(48), tmp_path / "g.png", names=["motion_blur", "haze"], severities=[1])
    grey = np.asarray(Image.open(p).convert("L"))
    dark = (grey < 200).sum(1)  # per pixel row: image rows are mostly dark (fundus background), text rows barely
    kind = np.where(dark > grey.shape[1] * 0.3, "i", np.where(dark > 0, "t", "w"))
    runs = [(k, sum(1 for _ in g)) for k, g in itertools.groupby(kind)]
    seq = [k for k, _ in runs]
    j = next(j for j in range(1, len(seq) - 1) if seq[j] == "t" and "i" in seq[:j])  # the second row's label
    above = runs[j - 1][1] if seq[j - 1] == "w" else 0
    below = runs[j + 1][1] if seq[j + 1] == "w" else 0
    assert seq[j + 1] in ("w", "i") and above > below, runs


def test_real_data_description_is_readable(tmp_path):
    from medxai.data import write_synthetic
    from medxai.pipeline.config import DataConfig
    from medxai.pipeline.data import build_datasets

    write_synthetic("fundus-dr", tmp_path / "dr", {"train": 5, "test": 5}, size=16)
    _, desc = build_datasets(DataConfig(spec=str(tmp_path / "dr"), use="real"), splits=("test",))
    assert desc["description"] == f"CSV layout at {tmp_path / 'dr'} (trainLabels.csv), classes 0, 1, 2, 3, 4"


# ---------------------------------------------------------------- 5. -q hides progress only
def test_quiet_audit_prints_scorecard_findings_and_report_path(ml_run):
    out, printed, rep = ml_run
    assert f"report: {out / 'report.html'}" in printed
    assert "scorecard: m" in printed and rep["findings"]
    assert all(" ".join(f["text"].split())[:40] in " ".join(printed.split()) for f in rep["findings"])
    assert "train/m:" not in printed and "auditing" not in printed  # no stage log, no spinner


def test_quiet_keeps_the_written_paths_of_other_commands(ml_run, tmp_path):
    out, _, _ = ml_run
    printed = _invoke(["-q", "corrupt", "--gallery", "--names", "haze", "--severities", "1", "-o", str(tmp_path)])
    assert f"wrote {tmp_path / 'gallery.png'}" in printed and (tmp_path / "gallery.png").stat().st_size > 1000
    printed = _invoke(["-q", "report", str(out), "-o", str(tmp_path / "copy")])
    assert f"report: {tmp_path / 'copy' / 'report.html'}" in printed
    assert "explains: " in (tmp_path / "copy" / "report.html").read_text()


# ---------------------------------------------------------------- 6. -o on every command that writes
def _commands() -> dict[tuple[str, ...], object]:
    import typer.main

    from medxai.cli import _load_commands, app

    _load_commands()
    found: dict[tuple[str, ...], object] = {}

    def walk(cmd, path: tuple[str, ...]) -> None:
        subs = getattr(cmd, "commands", {})
        for name, sub in subs.items():
            walk(sub, (*path, name))
        if not subs:
            found[path] = cmd

    walk(typer.main.get_command(app), ())
    return found


READ_ONLY = {("data", "info"), ("store", "info")}


def test_every_command_that_writes_takes_o_for_its_output_folder():
    cmds = _commands()
    assert READ_ONLY < set(cmds) and len(cmds) >= 14
    for path, cmd in cmds.items():
        opts = {o: p for p in cmd.params for o in getattr(p, "opts", ())}
        if path in READ_ONLY:
            assert "-o" not in opts, path
            continue
        assert "-o" in opts and "--out" in opts and opts["-o"] is opts["--out"], path
    assert {"--store", "--out", "-o"} <= set(next(p for p in cmds[("store", "explain")].params
                                                 if p.name == "store").opts)  # --store still works


# ---------------------------------------------------------------- 7. in a real browser
def test_browser_shows_finding_captions_and_no_empty_robustness(ml_run, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    out, _, rep = ml_run
    browser.get((out / "report.html").as_uri())
    caps = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#xgrid .explains")]
    assert caps == rep["explanations"]["captions"]["m|saliency"]
    assert all("explains: " in c and c.split("explains: ")[1].split(" (rank")[0] in rep["data"]["class_names"]
               for c in caps)
    Select(browser.find_element(By.ID, "ctl-method")).select_by_value("saliency")  # the script refills them
    assert [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#xgrid .explains")] == caps
    rob = browser.find_element(By.ID, "robustness")
    note = rob.find_element(By.CSS_SELECTOR, "p.not-run")
    assert note.is_displayed() and "attack.enabled and corruption.enabled are false" in note.text
    assert len(rob.text.strip()) > len("Robustness")
    cell = browser.find_element(By.CSS_SELECTOR, "#xgrid .cap")
    assert browser.execute_script("return getComputedStyle(arguments[0]).overflowWrap", cell) == "anywhere"
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
