"""Checkpoints: nested state round trips exactly through safetensors + JSON; bad files refused."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from _train_helpers import tiny_net
from medxai.errors import CheckpointError
from medxai.runs import pack, unpack, write_model_json
from medxai.train import load_run, read_checkpoint, save_checkpoint


def test_pack_unpack_round_trip_is_exact():
    state = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3)}},
             "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0, 1], "foreach": None}],
             "best": math.inf, "worst": -math.inf, "nan": math.nan, "np": np.arange(5, dtype=np.uint32),
             "py": random.getstate(), "__odd": 1, "nested": [(1, "a"), {"k": True}]}
    tensors: dict = {}
    data = json.loads(json.dumps(pack(state, "opt", tensors), allow_nan=False))
    back = unpack(data, tensors)
    assert back["state"][0]["step"].item() == 3.0
    assert torch.equal(back["state"][0]["exp_avg"], state["state"][0]["exp_avg"])
    assert back["param_groups"][0]["betas"] == (0.9, 0.999) and isinstance(back["param_groups"][0]["betas"], tuple)
    assert back["best"] == math.inf and back["worst"] == -math.inf and math.isnan(back["nan"])
    assert np.array_equal(back["np"], state["np"]) and back["np"].dtype == np.uint32
    assert back["py"] == state["py"]
    assert back["__odd"] == 1 and back["nested"] == [(1, "a"), {"k": True}]
    with pytest.raises(CheckpointError, match="cannot store a object"):
        pack({"x": object()}, "p", {})


def test_optimizer_state_survives_a_file(tmp_path):
    model = tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    model(torch.rand(4, 1, 12, 12)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "c.safetensors", model, states={"optimizer": opt.state_dict()},
                    meta={"train": {"epoch": 3}})
    ck = read_checkpoint(tmp_path / "c.safetensors")
    opt2 = torch.optim.SGD(tiny_net(seed=5).parameters(), lr=0.5)
    opt2.load_state_dict(ck.get("optimizer"))
    assert opt2.param_groups[0]["lr"] == 0.1 and opt2.param_groups[0]["nesterov"]
    for a, b in zip(opt.state.values(), opt2.state.values(), strict=True):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    assert ck.get("train") == {"epoch": 3}
    raw = (tmp_path / "c.safetensors").read_bytes()
    assert b"pickle" not in raw and b"\x80\x04" not in raw[:64]


def test_malformed_files_are_refused(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        read_checkpoint(tmp_path / "junk.safetensors")
    save_file({"a": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="not a medxai checkpoint"):
        read_checkpoint(tmp_path / "foreign.safetensors")
    save_file({"model/w": torch.zeros(1)}, str(tmp_path / "dangling.safetensors"),
              metadata={"format": "medxai.checkpoint/1", "optimizer": json.dumps({"__tensor__": "optimizer/9"})})
    with pytest.raises(CheckpointError, match="missing tensor"):
        read_checkpoint(tmp_path / "dangling.safetensors")
    save_file({"model/w": torch.zeros(1)}, str(tmp_path / "badjson.safetensors"),
              metadata={"format": "medxai.checkpoint/1", "train": "{oops"})
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_checkpoint(tmp_path / "badjson.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "absent.safetensors")


def test_load_run_checks_shapes_and_model_json(tmp_path):
    model = tiny_net(3)
    save_checkpoint(tmp_path / "best.safetensors", model, meta={"train": {"epoch": 2}})
    with pytest.raises(CheckpointError, match=r"model\.json"):
        load_run(tmp_path, model=tiny_net(3))
    write_model_json(tmp_path, {"task": "multiclass", "class_names": ["a", "b", "c"], "model": None})
    loaded, info = load_run(tmp_path, model=tiny_net(3, seed=1))
    assert info.epoch == 2 and info.num_classes == 3 and not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values(),
                                                 strict=True))
    with pytest.raises(CheckpointError, match=r"mismatch\(es\) e\.g\. 6\.bias: checkpoint \(3,\) vs model \(2,\)"):
        load_run(tmp_path, model=tiny_net(2))
    with pytest.raises(CheckpointError, match="no model config"):
        load_run(tmp_path)
    (tmp_path / "model.json").write_text("{}")
    with pytest.raises(CheckpointError, match="not a medxai model description"):
        load_run(tmp_path, model=tiny_net(3))
