"""Build the self-contained ``report.html`` of an audit from its ``report.json``.

Every number shown comes from ``report.json`` (which the pipeline gathers from the stages' JSON
files); figures are drawn here from those numbers with matplotlib, and image assets (examples,
heat-map overlays, galleries) are PNG files inside the run directory, embedded as data URIs. On
volumes the slice viewer's arrays (``report_assets/viewer.json``: base64 bytes of each shown volume,
its mask and maps) are embedded as JSON and drawn on canvases by the page's inline script.
Strings from data or config are HTML-escaped (jinja2 autoescape); nothing external is loaded.
"""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path
from typing import Any

import jinja2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from medxai._util.io import atomic_write_text
from medxai._util.plot import plain_text
from medxai._version import __version__
from medxai.errors import DataError

__all__ = ["build_report", "render_html"]


def _png_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _fig_uri(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _inside(run_dir: Path, rel: str) -> Path:
    """A path named in report.json, refused if it leaves the run directory."""
    p = (run_dir / rel).resolve()
    if run_dir.resolve() not in p.parents and p != run_dir.resolve():
        raise DataError(rel, "asset path leaves the run directory")
    if not p.is_file():
        raise DataError(p, "asset named in report.json is missing")
    return p


def _viewer_json(path: Path) -> dict:
    """The slice viewer's data written by the audit (``medxai.pipeline.volumes.viewer_data``)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(path, f"not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("volumes"), list):
        raise DataError(path, "not slice-viewer data (no list of volumes)")
    return data


def fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def ci(d: Any) -> str:
    lo, hi = (d.get("ci_low"), d.get("ci_high")) if isinstance(d, dict) else (None, None)
    if lo is None or hi is None:
        return "–"
    return f"[{fmt(lo)}, {fmt(hi)}]"


def count(v: Any) -> str:
    """A count or a large whole number with thousands separators (``12,345``); else as :func:`fmt`."""
    if isinstance(v, bool) or not isinstance(v, int | float) or (isinstance(v, float) and not v.is_integer()):
        return fmt(v)
    return f"{int(v):,}"


def pct(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


@plain_text
def _model_figure(m: dict) -> str | None:
    hist = m.get("history") or []
    conf = m.get("confusion")
    roc = m.get("roc") or {}
    panels = [bool(hist), conf is not None, bool(roc)]
    if not any(panels):
        return None
    fig, axes = plt.subplots(1, sum(panels), figsize=(4.2 * sum(panels), 3.2), squeeze=False)
    axes = list(axes[0])
    if hist:
        ax = axes.pop(0)
        ep = [h["epoch"] for h in hist]
        for key, style in (("train_loss", "-"), ("val_loss", "--")):
            if any(h.get(key) is not None for h in hist):
                ax.plot(ep, [h.get(key) for h in hist], style, label=key.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs
        ax.set_ylabel("loss")
        ax.set_title("learning curves")
        ax.legend(fontsize=8)
    if conf is not None:
        ax = axes.pop(0)
        arr = conf["matrix"]
        names = conf["labels"]
        ax.imshow(arr, cmap="Blues")
        for i, row in enumerate(arr):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(names)), names, rotation=30, fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title("confusion matrix (test)")
    if roc:
        ax = axes.pop(0)
        for label, pts in roc.items():
            ax.plot(pts["fpr"], pts["tpr"], label=f"{label} (AUC {fmt(pts.get('auc'))})")
        ax.plot([0, 1], [0, 1], ":", color="gray")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title("ROC (test)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _fig_uri(fig)


@plain_text
def _attack_figure(att: dict) -> str:
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name, a in att["models"].items():
        ax.plot(att["eps_labels"], a["success_rate"], "o-", label=name)
    ax.set_xlabel(f"eps ({att['norm']}, pixel units)")
    ax.set_ylabel("attack success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("success rate against eps")
    ax.legend(fontsize=8)
    return _fig_uri(fig)


@plain_text
def _radius_figure(att: dict) -> str | None:
    """Histogram of each model's per-image robustness radius (images with an example found)."""
    radii = {n: [v for v in (a.get("radius") or {}).get("radii") or [] if v is not None and v > 0]
             for n, a in att["models"].items()}
    radii = {n: v for n, v in radii.items() if v}
    if not radii:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.2))
    hi = max(max(v) for v in radii.values())
    bins = [hi * i / 20 for i in range(21)]
    for name, v in radii.items():
        ax.hist(v, bins=bins, histtype="step", linewidth=1.5, label=name)
    norm = next(a["radius"]["norm"] for a in att["models"].values() if a.get("radius", {}).get("norm"))
    ax.set_xlabel(f"minimum-norm perturbation ({norm}, pixel units)")
    ax.set_ylabel("images")
    ax.set_title("robustness radius per image")
    ax.legend(fontsize=8)
    return _fig_uri(fig)


@plain_text
def _corruption_figure(cor: dict) -> str:
    models = list(cor["models"])
    rows = list(next(iter(cor["models"].values()))["drops"])
    sev = [str(s) for s in cor["severities"]]
    fig, axes = plt.subplots(1, len(models), figsize=(2.2 + 0.9 * len(sev) * len(models) + 1.6 * len(models),
                                                       1.0 + 0.42 * len(rows)), squeeze=False, constrained_layout=True)
    vmax = max((abs(v) for c in cor["models"].values() for row in c["drops"].values() for v in row
                if v is not None), default=1.0) or 1.0
    for ax, name in zip(axes[0], models, strict=True):
        drops = cor["models"][name]["drops"]
        data = [[float("nan") if v is None else v for v in drops[r]] for r in rows]
        im = ax.imshow(data, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
        for i, row in enumerate(data):
            for j, v in enumerate(row):
                if v == v:
                    ax.text(j, i, f"{v:+.2f}", ha="center", va="center", fontsize=7,
                            color=text_colour(im.cmap(im.norm(v))))
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.set_xticks(range(len(sev)), sev, fontsize=7)
        ax.set_xlabel("severity")
        ax.set_title(f"{name}: drop in {cor['metric']}", fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    return _fig_uri(fig)


def text_colour(rgba: Any) -> str:
    """Black or white, whichever reads on a cell of colour ``rgba`` (WCAG relative luminance)."""
    def lin(c: float) -> float:
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (lin(float(c)) for c in rgba[:3])
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.179 else "white"


@plain_text
def _sanity_figure(rows: list[dict]) -> str:
    fig, ax = plt.subplots(figsize=(6, 3.4))
    gaps = False
    for s in rows:
        vals = [float("nan") if v is None else v for v in s["spearman"]]
        line = ax.plot(range(len(vals)), vals, "o-", label=f"{s['model']} / {s['method']}")[0]
        missing = [i for i, v in enumerate(vals) if v != v]
        if missing:  # undefined steps: an open marker on the 0 line, not a silent gap
            gaps = True
            ax.plot(missing, [0.0] * len(missing), "o", mfc="none", color=line.get_color())
    longest = max(rows, key=lambda s: len(s["layers"]), default=None)
    if longest and longest["layers"]:
        ax.set_xticks(range(len(longest["layers"])), longest["layers"], rotation=40, fontsize=6, ha="right")
    ax.axhline(0, color="gray", lw=0.5)
    ax.set_ylabel("Spearman rank correlation\nof |map| with the original", fontsize=8)
    ax.set_title("cascading randomisation (output layer first)")
    if gaps:
        ax.plot([], [], "o", mfc="none", color="gray", label="no value at this step (undefined)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _fig_uri(fig)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("medxai.report", "templates"),
        autoescape=True,
        undefined=jinja2.ChainableUndefined,
    )
    env.globals.update(fmt=fmt, ci=ci, pct=pct, count=count)
    return env


def render_html(report: dict, assets: dict) -> str:
    """Render the report template (autoescaped) from the report dict and embedded assets."""
    r = dict(report)
    r.setdefault("version", __version__)
    return _environment().get_template("report.html.j2").render(r=r, assets=assets)


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Read ``run_dir/report.json`` and write ``report.html`` into ``out`` (default ``run_dir``;
    the page embeds its assets, so it can live anywhere); returns its path."""
    run_dir = Path(run_dir)
    rj = run_dir / "report.json"
    if not rj.is_file():
        raise DataError(rj, "no report.json: run `medxai audit` first")
    try:
        report = json.loads(rj.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(rj, f"not valid JSON ({exc})") from None
    a = report.get("assets", {})
    assets: dict[str, Any] = {"models": {}}
    if a.get("data_examples"):
        assets["data_examples"] = _png_uri(_inside(run_dir, a["data_examples"]))
    for name, m in report.get("models", {}).items():
        uri = _model_figure(m)
        if uri:
            assets["models"][name] = uri
    rob = report.get("robustness") or {}
    if rob.get("attack"):
        assets["attack"] = _attack_figure(rob["attack"])
        if (uri := _radius_figure(rob["attack"])) is not None:
            assets["radius"] = uri
    if rob.get("corruption"):
        assets["corruption"] = _corruption_figure(rob["corruption"])
    if a.get("gallery"):
        assets["gallery"] = _png_uri(_inside(run_dir, a["gallery"]))
    xp = report.get("explanations") or {}
    if xp.get("images"):
        assets["x_images"] = [_png_uri(_inside(run_dir, img["png"])) for img in xp["images"]]
        assets["x_maps"] = {key: [_png_uri(_inside(run_dir, p)) for p in paths]
                            for key, paths in xp.get("overlays", {}).items()}
        if a.get("explanation_grid"):
            assets["x_grid"] = _png_uri(_inside(run_dir, a["explanation_grid"]))
    if xp.get("viewer"):  # volumes: the slice viewer's arrays (base64 bytes), embedded as JSON
        assets["viewer"] = _viewer_json(_inside(run_dir, xp["viewer"]))
    if report.get("sanity"):
        assets["sanity"] = _sanity_figure(report["sanity"])
    for section, key in (("subgroups", "png"), ("discovery", "png"), ("class_means", "class_means_png")):
        src = (report.get("discovery" if section == "class_means" else section) or {}).get("models") or {}
        assets[section] = {m: _png_uri(_inside(run_dir, v[key])) for m, v in src.items() if v.get(key)}
    html = render_html(report, assets)
    dest = Path(out) if out is not None else run_dir
    dest.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(dest / "report.html", html)
