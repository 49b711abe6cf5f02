"""Fuzzing the decoders and parsers (the short campaign; ``benchmarks/bench_fuzz.py`` runs 10,000
inputs per target): mutated PNG / JPEG / TIFF / DICOM bytes, CSV layouts, CheXpert CSVs, train,
audit and dataset-spec YAML and dataset manifests give a valid result or DataError / ConfigError,
never another exception, within a time bound per input."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medxai.errors import DataError

sys.path.insert(0, str(Path(__file__).parents[1]))  # the benchmarks package (repository root)
from benchmarks import bench_fuzz as F

TARGET_NAMES = ["png", "jpeg", "tiff", "dicom", "dicom-tags", "csv", "chexpert", "train-yaml", "audit-yaml",
                "dataset-yaml", "manifest-json", "model-card-yaml", "onnx"]


@pytest.fixture(scope="module")
def fuzz_targets(tmp_path_factory):
    ts = {t.name: t for t in F.targets(tmp_path_factory.mktemp("fuzz"))}
    assert sorted(ts) == sorted(TARGET_NAMES)
    return ts


def test_every_seed_is_valid(fuzz_targets):
    """The unmutated seeds decode / parse: the campaign starts from real files (the multi-frame
    DICOM seed, rtdose.dcm, is refused for want of frame=, which is its point)."""
    for t in fuzz_targets.values():
        for i, seed in enumerate(t.seeds):
            t.file.write_bytes(seed)
            try:
                t.check(t.call(t.file))
            except DataError as exc:
                assert (t.name, i) == ("dicom", 4) and "multi-frame DICOM" in str(exc)


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_seeded_campaign_meets_the_contract(fuzz_targets, name):
    res = F.campaign(fuzz_targets[name], F.N_QUICK, seed=1)
    assert res["inputs"] == F.N_QUICK
    assert res["unexpected"] == 0 and res["hangs"] == 0, res["failures"]
    assert res["valid"] + res["refused"] == F.N_QUICK
    assert res["refused"] > 0  # the mutations do reach the error paths
    assert res["max_s"] < F.TIME_LIMIT_S
    assert set(res["exceptions"]) <= {"DataError", "ConfigError", "ModelError"}


_OPS = st.lists(st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "token", "int32"]),
                          st.integers(0, 2**20), st.integers(0, 2**32 - 1)), min_size=1, max_size=5)


def _apply(data: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, pos, val in ops:
        n = len(buf)
        at = pos % (n + 1)
        if kind == "flip" and n:
            buf[at % n] ^= 1 << (val % 8)
        elif kind == "set" and n:
            buf[at % n] = val % 256
        elif kind == "insert":
            buf[at:at] = val.to_bytes(4, "little")[: 1 + val % 4]
        elif kind == "delete":
            del buf[at:at + 1 + val % 64]
        elif kind == "truncate":
            del buf[at:]
        elif kind == "token":
            buf[at:at] = F.HOSTILE_TOKENS[val % len(F.HOSTILE_TOKENS)].encode()
        elif kind == "int32" and n >= 4:
            at = min(at, n - 4)
            buf[at:at + 4] = F.INTERESTING_INTS[val % len(F.INTERESTING_INTS)].to_bytes(4, ("big", "little")[val % 2])
    return bytes(buf)


def _one(target: F.Target, data: bytes) -> None:
    target.file.write_bytes(data)
    t0 = time.perf_counter()
    try:
        target.check(target.call(target.file))
    except F.ALLOWED as exc:
        assert str(exc) and "\n" not in str(exc).strip()
    assert time.perf_counter() - t0 < F.TIME_LIMIT_S


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          database=None)
@given(data=st.data())
def test_hypothesis_mutations_of_images(fuzz_targets, data):
    t = fuzz_targets[data.draw(st.sampled_from(["png", "jpeg", "tiff", "dicom"]))]
    seed = data.draw(st.sampled_from(t.seeds))
    out = _apply(seed, data.draw(_OPS))
    if t.png and data.draw(st.booleans()):
        out = F._fix_png_crcs(out)
    _one(t, out)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          database=None)
@given(data=st.data())
def test_hypothesis_mutations_of_tables_and_configs(fuzz_targets, data):
    t = fuzz_targets[data.draw(st.sampled_from(["csv", "chexpert", "train-yaml", "audit-yaml", "dataset-yaml",
                                                "manifest-json"]))]
    _one(t, _apply(t.seeds[0], data.draw(_OPS)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          database=None)
@given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
def test_arbitrary_text_as_a_config_or_csv(fuzz_targets, text):
    for name in ("train-yaml", "audit-yaml", "csv"):
        _one(fuzz_targets[name], text.encode("utf-8", "surrogatepass"))
