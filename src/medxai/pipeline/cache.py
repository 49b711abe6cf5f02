"""Resumable stages keyed by a hash of their config and inputs.

Each stage call names the stage (``train/standard``), the parts its output depends on (its own
config and the keys of the stages it reads), and a function that writes into a fresh folder.
The folder is ``ROOT/stages/<stage>/<key>``; a stage is done when its ``result.json`` exists
(written last, atomically). A rerun with the same key skips the work; ``force`` recomputes the
named stages (by full name or by family, e.g. ``train``). Work in progress goes to a temporary
folder renamed into place, so a killed run never leaves a half stage that looks done.

With a ``meter`` (``medxai._util.flops.WorkMeter``) a computed stage also records the model work
it did (forwards, input-backwards, estimated FLOPs per model) in its event and in ``work.json``
next to ``result.json`` (read back, with the seconds it took, when the stage is reused).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medxai._util.io import atomic_write_json, atomic_write_text
from medxai.errors import ConfigError


def stage_key(parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts (sorted keys)."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class StageResult:
    name: str
    key: str
    dir: Path
    result: dict
    cached: bool
    seconds: float
    work: dict | None = None  # {model: {calls, images, backward_images, flops}} when computed with a meter


class StageRunner:
    """Runs stages under ``root`` with caching and a log of what ran and what was reused."""

    def __init__(self, root: str | Path, force: set[str] | None = None,
                 log: Callable[[str], None] | None = None, meter: Any = None) -> None:
        self.root = Path(root)
        self.meter = meter
        self.force = set(force or ())
        self.log = log or (lambda msg: None)
        self.events: list[dict] = []

    def _forced(self, name: str) -> bool:
        return name in self.force or name.split("/")[0] in self.force or "all" in self.force

    def run(self, name: str, parts: Any, fn: Callable[[Path], dict]) -> StageResult:
        key = stage_key(parts)
        stages = (self.root / "stages").resolve()
        final = self.root / "stages" / name / key
        if not final.resolve().is_relative_to(stages):  # backstop to the config's name check
            raise ConfigError(f"stage name {name!r} leaves the run directory {self.root}")
        done = final / "result.json"
        t0 = time.perf_counter()
        if done.is_file() and not self._forced(name):
            result = json.loads(done.read_text(encoding="utf-8"))
            ev = StageResult(name, key, final, result, True, 0.0)
            self._record(ev, _read_work(final))
            return ev
        tmp = final.with_name(f".{key}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        before = self.meter.snapshot() if self.meter is not None else None
        try:
            result = fn(tmp) or {}
            work = self.meter.since(before) if self.meter is not None else None
            if work is not None:
                atomic_write_json(tmp / "work.json", {"seconds": time.perf_counter() - t0, "models": work})
            atomic_write_json(tmp / "result.json", result)
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        result = json.loads((final / "result.json").read_text(encoding="utf-8"))
        ev = StageResult(name, key, final, result, False, time.perf_counter() - t0, work)
        self._record(ev, None if work is None else {"models": work})
        return ev

    def _record(self, ev: StageResult, work: dict | None = None) -> None:
        status = "reused" if ev.cached else f"ran in {ev.seconds:.1f} s"
        self.log(f"{ev.name}: {status} [{ev.key}]")
        entry = {"stage": ev.name, "key": ev.key, "cached": ev.cached, "seconds": round(ev.seconds, 3),
                 "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if work is not None:  # computed now: this run's work; reused: the work (and seconds) when computed
            entry["work"] = work
        self.events.append(entry)
        self.root.mkdir(parents=True, exist_ok=True)
        # rewritten whole and atomically (a few hundred lines at most): a kill never leaves a torn line
        log = self.root / "stage_log.jsonl"
        before = log.read_text(encoding="utf-8") if log.is_file() else ""
        atomic_write_text(log, before + json.dumps(entry) + "\n")


def _read_work(stage_dir: Path) -> dict | None:
    """A reused stage's ``work.json`` (its seconds and model work when it was computed), if written."""
    p = stage_dir / "work.json"
    try:
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None
    except (OSError, ValueError):
        return None
