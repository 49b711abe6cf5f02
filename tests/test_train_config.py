"""TrainConfig / RunConfig validation, --set overrides, and the CLI's exit code 2 on bad configs."""

from __future__ import annotations

import pytest
import yaml

from medxai.errors import ConfigError
from medxai.train.config import RunConfig, TrainConfig, apply_overrides, load_run_config, train_config

BASE = {"name": "demo", "model": {"name": "small-cnn"}, "data": {"train": "some/folder"}}


def test_defaults_and_dict_input():
    cfg = train_config({"lr": 0.01, "objective": {"name": "pgd", "eps": 0.03, "steps": 7}})
    assert isinstance(cfg, TrainConfig) and cfg.lr == 0.01 and cfg.optimizer == "adam"
    assert cfg.objective.name == "pgd" and cfg.objective.params() == {"eps": 0.03, "steps": 7}
    assert train_config(None) == TrainConfig()
    assert train_config(cfg) is cfg


@pytest.mark.parametrize(("bad", "needle"), [
    ({"lr": 0}, r"lr: Input should be greater than 0 \(got 0\)"),
    ({"optimizer": "rmsprop"}, r"optimizer: Input should be 'adam', 'adamw' or 'sgd' \(got 'rmsprop'\)"),
    ({"epochz": 3}, "epochz: unknown key"),
    ({"early_stopping": {"patience": 2, "mood": "max"}}, r"early_stopping\.mood: unknown key"),
    ({"scheduler": "cosine", "warmup_epochs": -1}, "warmup_epochs: Input should be greater than or equal to 0"),
    ({"nesterov": True, "optimizer": "adam"}, "nesterov applies to optimizer 'sgd' only"),
    ({"task": "multiclass", "ordinal": "cumulative"}, "needs task 'ordinal'"),
    ({"precision": "fp16"}, "precision: Input should be 'fp32' or 'bf16'"),
])
def test_errors_name_the_key(bad, needle):
    with pytest.raises(ConfigError, match=needle):
        train_config(bad)


def test_run_config_prefixes_nested_keys_and_overrides(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({**BASE, "train": {"lr": 0.1}}))
    cfg = load_run_config(path, ["train.lr=1e-3", "train.early_stopping.patience=4", "model.params.width=8",
                                 "train.objective.eps=0.01", "data.val_split=null"])
    assert isinstance(cfg, RunConfig)
    assert cfg.train.lr == 0.001 and cfg.train.early_stopping.patience == 4
    assert cfg.model.params == {"width": 8} and cfg.train.objective.params() == {"eps": 0.01}
    assert cfg.data.val_split is None
    with pytest.raises(ConfigError, match=r"train\.batch_size: Input should be a valid integer"):
        load_run_config(path, ["train.batch_size=many"])
    with pytest.raises(ConfigError, match=r"model\.name: Field required"):
        load_run_config(path, ["model={}"])
    with pytest.raises(ConfigError, match="key=value"):
        load_run_config(path, ["train.lr"])
    with pytest.raises(ConfigError, match=r"train\.lr is not a section"):
        apply_overrides({"train": {"lr": 1}}, ["train.lr.x=2"])
    (tmp_path / "bad.yaml").write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="cannot read config"):
        load_run_config(tmp_path / "absent.yaml")


def test_cli_exits_2_naming_the_bad_key(tmp_path, capsys):
    from medxai.cli import main

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({**BASE, "train": {"lr": -1}}))
    with pytest.raises(SystemExit) as info:
        main(["--quiet", "train", "--config", str(path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "train.lr" in err and "greater than 0" in err
    with pytest.raises(SystemExit) as info:
        main(["--quiet", "train", "--config", str(path), "--set", "train.lr=0.1", "--set", "train.epochs=0"])
    assert info.value.code == 2
    assert "train.epochs" in capsys.readouterr().err
