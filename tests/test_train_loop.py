"""medxai.train.fit: resume bitwise identity, NaN stop, multilabel NaN/soft targets, schedules,
early stopping, balancing, objectives plugged in by name."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from _train_helpers import TinySet, tiny_net
from medxai.errors import ConfigError
from medxai.train import OBJECTIVES, NonFiniteLossError, OrdinalHead, fit, load_run, read_checkpoint
from medxai.train.objectives import Standard


class _Interrupt(Standard):
    """Standard training that simulates a kill at the first step of epoch ``at`` (0-based)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def train_step(self, ctx, x, y):
        if ctx.epoch == self.at:
            raise KeyboardInterrupt
        return super().train_step(ctx, x, y)


class _CountLabels(Standard):
    """Standard training that counts the labels it sees in ``ctx.state`` (saved in checkpoints)."""

    def train_step(self, ctx, x, y):
        c = ctx.state.setdefault("counts", torch.zeros(2))
        c += torch.bincount(y, minlength=2).float()
        return super().train_step(ctx, x, y)


for _name, _cls in (("test-interrupt", _Interrupt), ("test-count-labels", _CountLabels)):
    if _name not in OBJECTIVES:
        OBJECTIVES.add(_name, _cls)


class _NanAt(nn.Module):
    """Returns NaN logits on its ``at``-th training-mode forward (1-based)."""

    def __init__(self, net: nn.Module, at: int) -> None:
        super().__init__()
        self.net, self.at, self.calls = net, at, 0

    def forward(self, x):
        out = self.net(x)
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                out = out * float("nan")
        return out


RECIPE = {"epochs": 4, "batch_size": 16, "optimizer": "adamw", "lr": 0.01, "weight_decay": 0.01,
          "scheduler": "cosine", "warmup_epochs": 0.5, "grad_clip": 1.0, "label_smoothing": 0.1,
          "monitor": "val_balanced_accuracy", "seed": 3}


def _weights(path):
    return read_checkpoint(path).model_state


def test_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path):
    train, val = TinySet(56, "multiclass", 3, seed=0), TinySet(24, "multiclass", 3, seed=1)
    full = fit(tiny_net(3), train, val, RECIPE, run_dir=tmp_path / "a")

    with pytest.raises(KeyboardInterrupt):
        fit(tiny_net(3), train, val, {**RECIPE, "objective": {"name": "test-interrupt", "at": 2}},
            run_dir=tmp_path / "b")
    assert read_checkpoint(tmp_path / "b" / "last.safetensors").get("train")["epoch"] == 2
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 2
    resumed = fit(tiny_net(3, seed=99), train, val, RECIPE, run_dir=tmp_path / "b", resume=True)

    for which in ("last", "best"):
        a, b = _weights(tmp_path / "a" / f"{which}.safetensors"), _weights(tmp_path / "b" / f"{which}.safetensors")
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (which, k)
    for pa, pb in zip(full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)
    strip = [{k: v for k, v in r.items() if k != "time_s"} for r in full.history]
    assert strip == [{k: v for k, v in r.items() if k != "time_s"} for r in resumed.history]
    lines = [json.loads(s) for s in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4]
    assert resumed.best_epoch == full.best_epoch
    assert "resumed from last.safetensors after epoch 2" in (tmp_path / "b" / "train.log").read_text()


def test_nan_loss_stops_naming_epoch_and_step_and_keeps_last_good_checkpoint(tmp_path):
    train, val = TinySet(64, seed=0), TinySet(16, seed=1)
    cfg = {"epochs": 3, "batch_size": 16, "lr": 0.01, "seed": 1}
    model = _NanAt(tiny_net(), at=7)  # 4 steps per epoch: epoch 2, step 3
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 3") as info:
        fit(model, train, val, cfg, run_dir=tmp_path / "nan")
    assert (info.value.epoch, info.value.step) == (2, 3)
    assert "last.safetensors" in str(info.value)
    assert all(torch.isfinite(p).all() for p in model.parameters())  # stopped before the update
    ck = read_checkpoint(tmp_path / "nan" / "last.safetensors")
    assert ck.get("train")["epoch"] == 1
    # the kept checkpoint is exactly a clean one-epoch run
    clean = fit(_NanAt(tiny_net(), at=10**9), train, val, {**cfg, "epochs": 1}, run_dir=tmp_path / "clean")
    ref = _weights(tmp_path / "clean" / "last.safetensors")
    assert all(torch.equal(ck.model_state[k], ref[k]) for k in ref)
    assert len(clean.history) == 1
    assert "non-finite training loss" in (tmp_path / "nan" / "train.log").read_text()
    assert len((tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()) == 1


def test_multilabel_with_nan_labels_and_soft_targets_trains(tmp_path):
    train = TinySet(160, "multilabel", 3, seed=0, nan_rate=0.3, soft=True)
    val = TinySet(80, "multilabel", 3, seed=1, nan_rate=0.2)
    g = torch.Generator().manual_seed(2)  # U-Random soft values for a third of the validation positives too
    pick = (val.y == 1) & (torch.rand(val.y.shape, generator=g) < 0.35)
    val.y = torch.where(pick, 0.55 + 0.3 * torch.rand(val.y.shape, generator=g), val.y)
    val.labels = val.y.numpy()
    for d in (train, val):
        assert torch.isnan(d.y).any() and ((d.y > 0) & (d.y < 1)).any()
    res = fit(tiny_net(3, dropout=0.0), train, val, {"epochs": 8, "batch_size": 32, "lr": 0.03,
                                                     "monitor": "val_auc_macro", "balance": "loss"},
              run_dir=tmp_path / "ml")
    assert all(math.isfinite(r["train_loss"]) for r in res.history)
    assert res.best_value >= 0.9, res.history[-1]
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    # validation: the loss uses the soft targets, the metrics ignore them (no hard truth) and say so
    from medxai.evaluate import classification, predict
    from medxai.train import masked_bce

    _, y_val, scores = predict(res.model, val)
    logits = torch.logit(torch.as_tensor(scores, dtype=torch.float64)).float()
    assert masked_bce(logits, torch.as_tensor(y_val)).item() == pytest.approx(res.history[res.best_epoch - 1]
                                                                               ["val_loss"], rel=1e-4)
    hard = torch.where((val.y > 0) & (val.y < 1), float("nan"), val.y)
    ref = classification(hard.numpy(), scores, "multilabel", n_boot=0)
    assert res.best_value == pytest.approx(ref["metrics"]["auc_macro"], abs=1e-9)
    ev = classification(y_val, scores, "multilabel", n_boot=0)
    soft_count = int(((val.y > 0) & (val.y < 1)).sum())
    assert sum(r["n_soft_ignored"] for r in ev["per_class"].values()) == soft_count > 0
    assert ev["metrics"] == ref["metrics"]
    model, info = load_run(tmp_path / "ml", model=tiny_net(3, dropout=0.0))
    assert info.task == "multilabel" and info.class_names == ["c0", "c1", "c2"] and info.epoch == res.best_epoch
    for a, b in zip(model.state_dict().values(), res.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def _linear(k=2, size=12):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(size * size, k))


class _Flat(nn.Module):
    """A fixed random linear map plus a trainable parameter with zero gradient: the losses stay
    exactly constant whatever the learning rate (plateau and early-stopping tests)."""

    def __init__(self, size=12):
        super().__init__()
        self.lin = _linear(2, size).requires_grad_(False)
        self.p = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.lin(x) + 0 * self.p


@pytest.mark.parametrize(("sched", "expect"), [
    ("step", lambda e, lr: lr * 0.5 ** ((e - 1) // 2)),
    ("cosine", None),
    ("plateau", lambda e, lr: lr * 0.5 ** max(0, e - 2)),  # first reduction at the end of epoch 2
])
def test_schedules_give_the_documented_learning_rates(sched, expect):
    train, val = TinySet(32, seed=0), TinySet(16, seed=1)
    lr = 1e-3
    cfg = {"epochs": 4, "batch_size": 8, "lr": lr, "scheduler": sched, "step_size": 2, "gamma": 0.5,
           "plateau_factor": 0.5, "plateau_patience": 0, "min_lr": 1e-4}
    res = fit(_Flat(), train, val, cfg)  # flat validation loss: plateau reduces after every epoch
    got = [r["lr"] for r in res.history]
    if sched == "cosine":  # last iteration of epoch e: t = 4e - 1 of 16
        want = [1e-4 + (lr - 1e-4) * 0.5 * (1 + math.cos(math.pi * (4 * e - 1) / 16)) for e in (1, 2, 3, 4)]
    else:
        want = [expect(e, lr) for e in (1, 2, 3, 4)]
    assert got == pytest.approx(want, rel=1e-9)


def test_warmup_is_linear_per_iteration():
    from medxai.train.config import TrainConfig
    from medxai.train.loop import lr_factor

    f = lr_factor(TrainConfig(epochs=3, warmup_epochs=1, scheduler="none"), steps_per_epoch=4)
    assert [f(t) for t in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_early_stopping_and_best_checkpoint(tmp_path):
    train, val = TinySet(32, seed=0), TinySet(16, seed=1)
    cfg = {"epochs": 6, "batch_size": 8, "lr": 0.1, "monitor": "val_accuracy",
           "early_stopping": {"patience": 2}}
    res = fit(_Flat(), train, val, cfg, run_dir=tmp_path)
    assert res.stopped_early and res.epochs_run == 3 and res.best_epoch == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped_early"] and summary["best_epoch"] == 1 and summary["train_time_s"] > 0
    assert read_checkpoint(tmp_path / "best.safetensors").get("train")["epoch"] == 1
    # resuming a finished (early-stopped) run trains nothing more
    again = fit(_Flat(), train, val, cfg, run_dir=tmp_path, resume=True)
    assert again.epochs_run == 3 and again.stopped_early


def test_weighted_sampler_draws_classes_evenly_and_objective_state_is_checkpointed(tmp_path):
    data = TinySet(200, seed=0)
    data.y = (torch.arange(200) % 10 == 0).long()  # 10 % positives
    data.labels = data.y.numpy()
    counts = {}
    for balance in ("none", "sampler"):
        fit(_linear(), data, None, {"epochs": 5, "batch_size": 50, "lr": 1e-3, "balance": balance,
                                    "objective": {"name": "test-count-labels"}}, run_dir=tmp_path / balance)
        c = read_checkpoint(tmp_path / balance / "last.safetensors").get("objective")["counts"]
        counts[balance] = float(c[1] / c.sum())
    assert counts["none"] == pytest.approx(0.1)
    assert 0.44 < counts["sampler"] < 0.56


def test_bf16_autocast_and_channels_last_train():
    train = TinySet(32, "multiclass", 3, seed=0, in_chans=3)
    model = tiny_net(3, in_chans=3)
    before = [p.detach().clone() for p in model.parameters()]
    res = fit(model, train, None, {"epochs": 1, "batch_size": 16, "precision": "bf16", "channels_last": True})
    assert math.isfinite(res.history[0]["train_loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_ordinal_cumulative_head_learns_and_mismatch_is_refused():
    train, val = TinySet(120, "ordinal", 4, seed=0), TinySet(60, "ordinal", 4, seed=1)
    with pytest.raises(ConfigError, match="OrdinalHead"):
        fit(tiny_net(4), train, val, {"epochs": 1, "ordinal": "cumulative"})
    model = OrdinalHead(tiny_net(1, dropout=0.0), "cumulative", 4)
    res = fit(model, train, val, {"epochs": 10, "batch_size": 20, "lr": 0.03, "ordinal": "cumulative",
                                  "monitor": "val_kappa_quadratic"})
    assert res.best_value >= 0.8, res.history[-1]


def test_config_errors_name_the_key():
    data = TinySet(8)
    with pytest.raises(ConfigError, match=r"lr: Input should be greater than 0 \(got -1\)"):
        fit(_linear(), data, None, {"lr": -1})
    with pytest.raises(ConfigError, match="optimzer: unknown key"):
        fit(_linear(), data, None, {"optimzer": "adam"})
    with pytest.raises(ConfigError, match=r"early_stopping\.patience"):
        fit(_linear(), data, None, {"early_stopping": {"patience": 0}})
    with pytest.raises(ConfigError, match="objective"):
        fit(_linear(), data, None, {"objective": {"name": "no-such-objective"}})
    with pytest.raises(ConfigError, match=r"val_nope.*known:.*val_auc"):
        fit(_linear(), data, data, {"epochs": 1, "monitor": "val_nope"})
    with pytest.raises(ConfigError, match="needs validation data"):
        fit(_linear(), data, None, {"monitor": "val_auc"})
    with pytest.raises(ConfigError, match="2 outputs"):
        fit(_linear(k=1), data, None, {"epochs": 1})
