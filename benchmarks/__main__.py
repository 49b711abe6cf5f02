"""``python -m benchmarks run [--quick] [--only KIND ...]``: run every bench_*.py module.

Each module exposes ``run(quick: bool) -> {"kind": str, "rows": [...]}`` (optional ``notes`` and
``figure``, a path relative to ``docs/``). Results go to ``benchmarks/results/KIND.json`` (quick
runs to ``benchmarks/results/quick/``). A full run rewrites the table in ``docs/benchmarks.md``
from every results file present, so ``--only`` re-runs one comparison and keeps the others;
``python -m benchmarks table`` rewrites the table alone.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import pkgutil
import sys
import time
import traceback
from pathlib import Path

from benchmarks._harness import finite, machine, matmul_peak_flops
from medxai._util.io import atomic_write_json, atomic_write_text

HERE = Path(__file__).parent
DOCS = HERE.parent / "docs" / "benchmarks.md"
MAIN_COLS = ("work", "peer", "medxai_s", "peer_s", "ratio", "target", "met", "agreement", "tol", "note")
REASONS = HERE / "miss_reasons.json"  # reasons written after reading a run's results: {work prefix: reason}
HIDDEN = {"agreement_kind", "times_s", "target_on", "target_sense", "agreement_ok", "reason", "result",
          "reason_source", "agreement_reason", "curves", "restated"}
FLOP_KEYS = ("flops", "peer_flops", "bare_flops_per_s", "medxai_gflop_per_s", "peer_gflop_per_s", "bare_gflop_per_s",
             "medxai_share_of_peak", "peer_share_of_peak", "medxai_share_of_bare", "peer_share_of_bare",
             "flop_ratio", "ratio_limit")  # shown in the FLOP efficiency section, not in a row's details


def modules() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules([str(HERE)]) if m.name.startswith("bench_"))


def _fmt(v: object, nd: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float):
        return f"{v:.{nd}g}" if math.isfinite(v) else str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x, nd) for x in v) + "]"
    return str(v).replace("|", "/").replace("\n", " ")


def _target(r: dict) -> str:
    if r.get("target") is None:
        return "-"
    on = r.get("target_on", "ratio")
    sense = r.get("target_sense", ">=")
    return f"{sense} {_fmt(r['target'])}x" if on == "ratio" else f"{on} {sense} {_fmt(r['target'])}"


def _met(r: dict) -> str:
    if r.get("met") is None:
        return "not measured" if r.get("target") is not None else "-"
    value = r.get(r.get("target_on", "ratio"))
    return f"met ({_fmt(value)})" if r["met"] else f"**missed** ({_fmt(value)})"


def _agreement(r: dict) -> str:
    a = r.get("agreement")
    if a is None:
        return "-"
    s = f"{_fmt(a)} ({r.get('agreement_kind', '')})"
    if r.get("agreement_ok") is False:
        s += " **outside tol**"
    return s


def _details(r: dict) -> str:
    keys = sorted(k for k in r if k not in MAIN_COLS and k not in HIDDEN and k not in FLOP_KEYS)
    parts = [f"{k}={_fmt(r[k])}" for k in keys if not isinstance(r[k], dict)]
    return "; ".join(parts)


def _note(r: dict) -> str:
    note = str(r.get("note") or "")
    if r.get("restated"):
        note = f"**target restated**: {r['restated']}." + (f" {note}" if note else "")
    if r.get("met") is False:
        src = " (reason written after reading the results)" if r.get("reason_source") else ""
        why = str(r.get("reason") or "no reason recorded").rstrip(". ")
        note = f"**missed because**{src}: {why}." + (f" {note}" if note else "")
    if r.get("agreement_ok") is False:
        note += f" **Agreement outside tol {_fmt(r.get('tol'))}**: {r.get('agreement_reason', 'no reason recorded')}"
    return _fmt(note)


def summary(results: list[dict]) -> tuple[list[str], list[dict]]:
    rows = [(res["kind"], r) for res in results for r in res.get("rows", [])]
    with_target = [(k, r) for k, r in rows if r.get("target") is not None]
    met = [(k, r) for k, r in with_target if r.get("met") is True]
    missed = [(k, r) for k, r in with_target if r.get("met") is False]
    unmeasured = [(k, r) for k, r in with_target if r.get("met") is None]
    bad_agree = [(k, r) for k, r in rows if r.get("agreement_ok") is False]
    restated = [(k, r) for k, r in with_target if r.get("restated")]
    lines = [f"**{len(with_target)} targets: {len(met)} met, {len(missed)} missed"
             + (f", {len(unmeasured)} not measured" if unmeasured else "") + ".**", ""]
    if missed:
        lines += ["Missed targets (measured value, reason):", ""]
        for k, r in missed:
            lines.append(f"- {k}: {r['work']} vs {r.get('peer') or '-'}: {_target(r)}, measured "
                         f"{_fmt(r.get(r.get('target_on', 'ratio')))}. {r.get('reason') or 'no reason recorded'}")
        lines.append("")
    if restated:
        lines += ["Ratio targets restated as FLOP efficiency (the FLOP limit makes the ratio impossible; "
                  "see the FLOP efficiency section):", ""]
        lines += [f"- {k}: {r['work']} vs {r.get('peer') or '-'}: original target >= "
                  f"{_fmt(r.get('original_target'))}x, measured ratio {_fmt(r.get('ratio'))}, "
                  f"limit {_fmt(r.get('ratio_limit'))}x; efficiency {_target(r)}: {_met(r)}" for k, r in restated]
        lines.append("")
    if bad_agree:
        lines += ["Agreement outside tolerance:", ""]
        lines += [f"- {k}: {r['work']}: {_agreement(r)}, tol {_fmt(r.get('tol'))}. {r.get('agreement_reason', '')}"
                  for k, r in bad_agree]
        lines.append("")
    failed = [res for res in results if res.get("error")]
    if failed:
        lines += ["Modules that failed: " + ", ".join(f"{res['kind']} (`{res['error']}`)" for res in failed), ""]
    return lines, [r for _, r in missed]


def table(results: list[dict], info: dict) -> str:
    load = info.get("load_1min")
    lines = ["# Benchmarks", "",
             "Generated by `make bench` (`python -m benchmarks run`; `python -m benchmarks table` rebuilds this",
             "page from `benchmarks/results/*.json`). medxai and the peer run in one process on the same model,",
             "inputs and settings, interleaved, with warm-up and repeats (median); ratio = peer time / medxai",
             "time (> 1: medxai faster). Agreement is measured on the same inputs (its kind is given); `tol` is",
             "the agreement a row must reach. GPU columns: **not measured** (no GPU was lent to the session",
             "that ran this; every row below is CPU).", "",
             f"Machine: {info['cores']} cores, {info['cpu']}, torch {info['torch']} ({info.get('torch_threads')} "
             f"threads), Python {info['python']}, measured fp32 matmul peak {info['matmul_gflops']:.1f} GFLOP/s"
             + (f", bf16 hardware: {', '.join(info['bf16_hw'])}" if info.get("bf16_hw") else "")
             + (f"; 1-minute load average {load:.1f} when the latest module started (the machine is shared, so "
                "absolute times are noisy; ratios measured side by side are much less so; each section gives "
                "its own)" if finite(load) else "") + ".", ""]
    total = sum(res.get("seconds", 0.0) for res in results)
    lines += [f"Run time of the modules: {total / 60:.1f} min wall in total ("
              + ", ".join(f"{res['kind']} {res.get('seconds', 0):.0f} s"
                          + (f" ({res['cpu_seconds']:.0f} s CPU)" if finite(res.get("cpu_seconds")) else "")
                          for res in results) + "). Each section gives the 1-minute load average when it ran.",
              ""]
    summ, _ = summary(results)
    lines += ["## Summary", "", *summ, *flop_section(results)]
    for res in results:
        lines += [f"## {res['kind']}", ""]
        m = res.get("machine") or {}
        if finite(m.get("load_1min")):
            lines += [f"Ran {res.get('finished', '')}, {res.get('seconds', 0):.0f} s; load average "
                      f"{m['load_1min']:.1f} at the start of the run"
                      + (f", {m['load_1min_end']:.1f} at the end of this module" if finite(m.get("load_1min_end"))
                         else "") + ".", ""]
        if res.get("error"):
            lines += [f"Failed: `{res['error']}`", ""]
            continue
        rows = res.get("rows", [])
        if not rows:
            lines += ["(no rows)", ""]
            continue
        lines.append("| work | peer | medxai s | peer s | ratio | target | met | agreement | GPU | note | details |")
        lines.append("|" + "---|" * 11)
        for r in rows:
            cells = [_fmt(r.get("work")), _fmt(r.get("peer")), _fmt(r.get("medxai_s")), _fmt(r.get("peer_s")),
                     _fmt(r.get("ratio")), _target(r), _met(r), _agreement(r),
                     _fmt(r.get("gpu_ratio", "not measured")), _note(r), _details(r)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if res.get("figure"):
            lines += [f"![{res['kind']}]({res['figure']})", ""]
        if res.get("notes"):
            lines += [str(res["notes"]), ""]
    _, missed = summary(results)
    lines += ["## Closing note", ""]
    if missed:
        lines += ["Missed targets: " + "; ".join(
            f"{r['work']} vs {r.get('peer') or '-'} ({_target(r)}, measured {_fmt(r.get(r.get('target_on', 'ratio')))})"
            for r in missed) + ". Each row above gives the reason.", ""]
    else:
        lines += ["Every target with a measurement was met.", ""]
    lines += ["GPU columns: not measured (no GPU was lent to the session that ran this).", ""]
    return "\n".join(lines) + "\n"


def _pct(v: object) -> str:
    return f"{100 * v:.0f} %" if finite(v) else "-"


def flop_section(results: list[dict]) -> list[str]:
    """The "FLOP efficiency (compute-bound rows)" section: one line per row with model FLOPs counted."""
    rows = [(res["kind"], r) for res in results for r in res.get("rows", [])
            if finite(r.get("flops")) or finite(r.get("medxai_gflop_per_s"))]
    if not rows:
        return []
    lines = ["## FLOP efficiency (compute-bound rows)", "",
             "Rows whose work is a network's passes on both sides. FLOPs of one call per side by torch's "
             "FlopCounterMode (counted untimed); GFLOP/s = FLOPs / median time; peak = the measured fp32 matmul "
             "peak (bf16 rows can exceed it); bare = the model's own passes alone (forward, or forward + backward "
             "for gradient methods, attacks and training) at the batch medxai feeds the model (its chunk), else "
             "the row's batch; a share of bare above 100 % means the method's passes ran faster per FLOP than "
             "the bare ones (e.g. a backward that stops at a layer, a larger batch inside the model) or timing "
             "noise; flop ratio = peer FLOPs / medxai FLOPs; ratio limit = peer time x bare rate / medxai FLOPs, "
             "the ratio medxai would reach if all its FLOPs ran at the bare rate. A missed ratio target above "
             "the limit is restated as medxai's share of bare >= 0.8. '-': not counted (the row's note says "
             "why).", "",
             "| module | work | peer | medxai GFLOP/s (of peak) | peer GFLOP/s (of peak) | bare GFLOP/s "
             "| medxai of bare | peer of bare | flop ratio | ratio limit |", "|" + "---|" * 10]
    for k, r in rows:
        cells = [k, _fmt(r.get("work")), _fmt(r.get("peer")),
                 f"{_fmt(r.get('medxai_gflop_per_s'))} ({_pct(r.get('medxai_share_of_peak'))})",
                 f"{_fmt(r.get('peer_gflop_per_s'))} ({_pct(r.get('peer_share_of_peak'))})",
                 _fmt(r.get("bare_gflop_per_s")), _pct(r.get("medxai_share_of_bare")),
                 _pct(r.get("peer_share_of_bare")), _fmt(r.get("flop_ratio")), _fmt(r.get("ratio_limit"))]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _add_flops(res: dict, peak: float) -> None:
    for r in res.get("rows", []):
        for side in ("medxai", "peer"):
            if finite(r.get(f"{side}_gflop_per_s")) and peak:
                r[f"{side}_share_of_peak"] = r[f"{side}_gflop_per_s"] * 1e9 / peak


def apply_reasons(results: list[dict], reasons: dict[str, str]) -> None:
    """A missed row's reason from ``miss_reasons.json`` (the longest matching work prefix) replaces the
    module's default; the row says so (``reason_source``)."""
    for res in results:
        for r in res.get("rows", []):
            keys = [k for k in reasons if str(r.get("work", "")).startswith(k)]
            if not keys:
                continue
            text = reasons[max(keys, key=len)]
            if r.get("met") is False:
                r["reason"] = text
                r["reason_source"] = "miss_reasons.json (written after reading the results)"
            elif r.get("agreement_ok") is False:
                r["agreement_reason"] = text


def write_table() -> Path:
    """Rebuild docs/benchmarks.md from every full-run results file (``benchmarks/results/*.json``)."""
    results = [json.loads(p.read_text()) for p in sorted((HERE / "results").glob("*.json"))]
    if REASONS.exists():
        apply_reasons(results, json.loads(REASONS.read_text()))
    order = {n: i for i, n in enumerate(modules())}
    results.sort(key=lambda res: (order.get(res.get("module", "bench_" + res.get("kind", "")), len(order)),
                                  res.get("kind", "")))
    if not results:
        raise SystemExit("no results in benchmarks/results/: run `python -m benchmarks run` first")
    info = max((res for res in results if res.get("machine")), key=lambda res: res.get("finished", ""))["machine"]
    atomic_write_text(DOCS, table(results, info))
    return DOCS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks")
    ap.add_argument("cmd", choices=["run", "list", "table"])
    ap.add_argument("--quick", action="store_true", help="every comparison at tiny size")
    ap.add_argument("--only", nargs="*", default=None, help="module names (bench_x or x)")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results[/quick])")
    args = ap.parse_args(argv)
    names = modules()
    if args.cmd == "list":
        print("\n".join(names))
        return 0
    if args.cmd == "table":
        print(write_table())
        return 0
    if args.only:
        wanted = {n if n.startswith("bench_") else f"bench_{n}" for n in args.only}
        unknown = wanted - set(names)
        if unknown:
            print(f"unknown benchmark module(s): {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        names = [n for n in names if n in wanted]
    info = machine()
    info["matmul_gflops"] = matmul_peak_flops(256 if args.quick else 1024) / 1e9
    out_dir = Path(args.out) if args.out else HERE / "results" / ("quick" if args.quick else "")
    failed = []
    t_all = time.perf_counter()
    for name in names:
        t0, c0 = time.perf_counter(), time.process_time()
        print(f"[bench] {name} ...", flush=True)
        try:
            res = importlib.import_module(f"benchmarks.{name}").run(quick=args.quick)
        except Exception as exc:  # a failing comparison is reported, the others still run
            traceback.print_exc()
            res = {"kind": name.removeprefix("bench_"), "rows": [], "error": f"{type(exc).__name__}: {exc}"}
            failed.append(name)
        res["module"] = name
        res["seconds"] = time.perf_counter() - t0
        res["cpu_seconds"] = time.process_time() - c0
        res["machine"] = dict(info, load_1min_end=machine().get("load_1min"))
        res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        for r in res.get("rows", []):
            r.pop("result", None)
        _add_flops(res, info["matmul_gflops"] * 1e9)
        atomic_write_json(out_dir / f"{res['kind']}.json", res)
        print(f"[bench] {name}: {len(res.get('rows', []))} rows in {res['seconds']:.1f} s", flush=True)
    print(f"[bench] all: {time.perf_counter() - t_all:.1f} s", flush=True)
    if not args.quick and not args.out:
        print(f"[bench] table: {write_table()}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
