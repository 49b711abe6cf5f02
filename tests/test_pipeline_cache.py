"""Stage caching: same key reuses, changed parts or --force recompute, a failure leaves no stage."""

import json

import pytest

from medxai.pipeline.cache import StageRunner, stage_key


def test_stage_key_is_order_independent_and_sensitive():
    assert stage_key({"a": 1, "b": [1, 2]}) == stage_key({"b": [1, 2], "a": 1})
    assert stage_key({"a": 1}) != stage_key({"a": 2})


def test_reuse_force_and_failure(tmp_path):
    calls = []

    def work(d):
        calls.append(d)
        (d / "out.txt").write_text("x")
        return {"n": len(calls)}

    r = StageRunner(tmp_path)
    a = r.run("train/standard", {"lr": 1}, work)
    b = r.run("train/standard", {"lr": 1}, work)
    assert not a.cached and b.cached and b.result == {"n": 1} and len(calls) == 1
    assert (b.dir / "out.txt").read_text() == "x"
    c = r.run("train/standard", {"lr": 2}, work)
    assert not c.cached and len(calls) == 2
    forced = StageRunner(tmp_path, force={"train"}).run("train/standard", {"lr": 1}, work)
    assert not forced.cached and forced.result == {"n": 3}

    def boom(d):
        (d / "half.txt").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        r.run("explain/standard/ig", {"k": 1}, boom)
    stage_dir = tmp_path / "stages" / "explain" / "standard" / "ig"
    assert not any(p.name == "result.json" for p in stage_dir.rglob("*"))
    log = [json.loads(line) for line in (tmp_path / "stage_log.jsonl").read_text().splitlines()]
    assert [e["cached"] for e in log] == [False, True, False, False]
