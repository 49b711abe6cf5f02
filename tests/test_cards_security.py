"""Hostile model files and cards: refused with one-line ModelErrors before torch or onnx reads them."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medxai.cards import load_card, read_card
from medxai.errors import ModelError


def _onnx_with_external_data(tmp_path, location: str):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((2, 4), np.float32), "w")
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Transpose", ["w"], ["wt"]),
             helper.make_node("MatMul", ["f", "wt"], ["y"])]
    graph = helper.make_graph(nodes, "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 1, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 2])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin",
                    size_threshold=0)
    m = onnx.load(str(path), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    onnx.save(m, str(path))
    return path


def _card(path, fmt):
    card = path.parent / "card.yaml"
    card.write_text(yaml.safe_dump({"path": path.name, "format": fmt, "task": "binary", "classes": ["a", "b"],
                                    "input": {"size": [2, 2], "channels": 1}}))
    return card


def test_onnx_external_data_outside_the_folder_is_refused(tmp_path):
    (tmp_path / "sub").mkdir()
    path = _onnx_with_external_data(tmp_path / "sub", "../w.bin")
    (tmp_path / "w.bin").write_bytes(np.ones(8, np.float32).tobytes())
    with pytest.raises(ModelError, match="outside the model's folder"):
        load_card(_card(path, "onnx"))


def test_onnx_external_data_inside_the_folder_loads(tmp_path):
    import torch

    path = _onnx_with_external_data(tmp_path, "w.bin")
    model, _ = load_card(_card(path, "onnx"))
    assert torch.allclose(model(torch.ones(1, 1, 2, 2)), torch.full((1, 2), 4.0))


def test_zip_bomb_and_escaping_members_are_refused_before_torch(tmp_path):
    bomb = tmp_path / "bomb.ts"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("m/data.pkl", b"\0" * (8 * 2**20))  # 8 MiB of zeros packs to a few KiB
    with pytest.raises(ModelError, match="zip bomb"):
        load_card(_card(bomb, "torchscript"))
    escape = tmp_path / "escape.pt2"
    with zipfile.ZipFile(escape, "w") as zf:
        zf.writestr("../../etc/evil", b"x")
    with pytest.raises(ModelError, match="leaves the archive"):
        load_card(_card(escape, "exported"))
    junk = tmp_path / "junk.ts"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="not a zip archive"):
        load_card(_card(junk, "torchscript"))


_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=True), st.text(max_size=12),
                    st.lists(st.integers(-2, 64), max_size=3), st.dictionaries(st.text(max_size=6), st.integers(),
                                                                                max_size=2))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(card=st.dictionaries(st.sampled_from(["path", "format", "arch", "task", "classes", "positive_class", "input",
                                             "output", "cam_layer", "trust_code", "extra"]), _VALUES, max_size=8))
def test_card_fuzz_only_model_errors(tmp_path, card):
    """Any mapping as a card: read_card returns a card or raises ModelError, nothing else."""
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07")
    try:
        read_card(card, base=tmp_path)
    except ModelError as exc:
        assert "\n" not in str(exc)
