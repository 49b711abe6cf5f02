"""``python -m benchmarks.findings [--quick] [--only STUDY ...] [--results DIR] [--doc PATH] [--table]``."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.findings import STUDIES, _common, study_module


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.findings", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smoke size (seconds per study), results under quick/")
    ap.add_argument("--only", nargs="*", default=None, help=f"studies (of {', '.join(STUDIES)}; short names ok)")
    ap.add_argument("--results", type=Path, default=None, help="results folder (default benchmarks/results/findings)")
    ap.add_argument("--doc", type=Path, default=None, help="markdown to regenerate (default docs/findings.md)")
    ap.add_argument("--table", action="store_true", help="only regenerate the markdown from the results present")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the audits' run directories here")
    args = ap.parse_args(argv)
    results = args.results or (_common.RESULTS / "quick" if args.quick else _common.RESULTS)
    doc = args.doc or (results / "findings.md" if args.quick else _common.DOC)
    if not args.table:
        names = [study_module(n).STUDY for n in (args.only or list(STUDIES))]
        for name in names:
            mod = study_module(name)
            with tempfile.TemporaryDirectory() as tmp:
                work = args.workdir / name if args.workdir else Path(tmp)
                res = _common.run_study(mod.STUDY, mod.TITLE, mod.run, args.quick, work)
            path = _common.write_result(res, results)
            counts = {v: sum(c["verdict"] == v for c in res["claims"]) for v in _common.VERDICTS}
            print(f"{name}: {res['seconds']:.0f} s, {counts} -> {path}", flush=True)
    print(f"wrote {_common.write_doc(results, doc, list(STUDIES))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
