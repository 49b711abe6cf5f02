"""predict(): batched probabilities equal one-at-a-time softmax/sigmoid; model mode restored; CSV."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest
import torch

from _train_helpers import TinySet, tiny_net
from medxai.errors import InputError
from medxai.evaluate import collate, predict, predictions_csv


def test_predict_matches_per_item_softmax_and_restores_mode():
    data = TinySet(23, "multiclass", 3, seed=2)
    model = tiny_net(3)
    model.train()
    model[1].eval()  # a mixed-mode model must come back exactly as it was
    ids, y, p = predict(model, data, batch_size=5)
    assert model.training and not model[1].training and model[0].training
    assert ids == [f"t{i:03d}" for i in range(23)]
    assert y.dtype == np.int64 and np.array_equal(y, data.y.numpy())
    model.eval()
    with torch.no_grad():
        ref = torch.cat([torch.softmax(model(data[i]["image"][None]), 1) for i in range(23)]).numpy()
    assert np.allclose(p, ref, atol=1e-6) and np.allclose(p.sum(1), 1, atol=1e-6)


def test_predict_multilabel_uses_sigmoid_and_keeps_nan_truths():
    data = TinySet(10, "multilabel", 3, seed=1, nan_rate=0.3)
    model = tiny_net(3).eval()
    _, y, p = predict(model, data, batch_size=4)
    with torch.no_grad():
        ref = torch.sigmoid(model(data.x)).numpy()
    assert np.allclose(p, ref, atol=1e-6)
    assert np.array_equal(np.isnan(y), torch.isnan(data.y).numpy())


def test_tuple_items_get_positional_ids_and_bad_items_are_refused():
    items = [(torch.rand(1, 12, 12), i % 2) for i in range(5)]

    class L(list):
        task = "binary"

    ids, y, _ = predict(tiny_net(), L(items), batch_size=2)
    assert ids == ["0", "1", "2", "3", "4"] and y.tolist() == [0, 1, 0, 1, 0]
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        predict(tiny_net(), L([(torch.full((1, 12, 12), 2.0), 0)]))
    with pytest.raises(InputError, match="'image' and 'label'"):
        collate([{"img": 1}])
    with pytest.raises(InputError, match="task"):
        predict(tiny_net(), list(items))


def test_predictions_csv_round_trips():
    text = predictions_csv(["a", "b"], np.array([1, 0]), np.array([[0.25, 0.75], [0.9, 0.1]]), ["n", "p"], "binary")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0] == {"id": "a", "truth": "1", "true_class": "p", "pred": "1", "score_n": "0.25", "score_p": "0.75"}
    text = predictions_csv(["a"], np.array([0]), np.array([[0.6, 0.4]]), ["n", "p"], "binary", paths=["x/a.png"])
    assert next(csv.DictReader(io.StringIO(text)))["path"] == "x/a.png"
    assert rows[1]["pred"] == "0"
    text = predictions_csv(["a"], np.array([[1.0, math.nan]]), np.array([[0.5, 0.125]]), ["x", "y"], "multilabel")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0] == {"id": "a", "truth_x": "1", "truth_y": "", "score_x": "0.5", "score_y": "0.125"}


def test_predictions_csv_keeps_soft_multilabel_truths():
    text = predictions_csv(["a"], np.array([[0.0, 0.56, math.nan]], dtype=np.float32), np.array([[0.5, 0.25, 0.75]]),
                           ["x", "y", "z"], "multilabel")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0]["truth_x"] == "0" and rows[0]["truth_y"] == "0.56" and rows[0]["truth_z"] == ""
    assert float(rows[0]["truth_y"]) == pytest.approx(0.56)


def test_batching_mixed_sizes_names_the_file_and_the_remedy():
    items = [{"image": torch.zeros(1, 4, 4), "label": 0, "path": "a.png"},
             {"image": torch.zeros(1, 5, 4), "label": 1, "path": "sub/b.png"}]
    with pytest.raises(InputError, match=r"cannot batch sub/b\.png: its image is \(1, 5, 4\) but a\.png's is "
                                         r"\(1, 4, 4\); set size:"):
        collate(items)
