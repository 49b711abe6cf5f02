"""Errors made clear and early: Ctrl-C during ``medxai train`` (exit 130, the resume command named),
misspelled nested config keys (one line naming the key, before any data is read), attack budgets
in the wrong units (``8`` meant as ``8/255``; L2 radii larger than the image), a medxai run's own
checkpoint as ``pretrained`` (and whole-program files pointed to model cards), and the training
commands of docs/scaling.md run as written (with the complete example config)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from medxai.attacks.budget import check_budget, parse_eps, parse_eps_list
from medxai.cli import _load_commands, main
from medxai.cli._app import app
from medxai.errors import CheckpointError, ConfigError
from medxai.train import OBJECTIVES, TrainingInterrupted, fit
from medxai.train.config import ModelSection, RunConfig, TrainConfig, load_run_config
from medxai.train.objectives import Standard, check_objective

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "train.epochs=1", "--set", "train.batch_size=16", "--set", "model.params.width=4",
        "--set", "train.device=cpu"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A tiny written study (16 px, 32 train / 8 val / 8 test images)."""
    from medxai.data import write_synthetic

    root = tmp_path_factory.mktemp("early") / "study"
    write_synthetic("cxr-pneumonia", root, {"train": 32, "val": 8, "test": 8}, size=16, seed=0, balanced=True)
    return root


def _config(path: Path, data, **train) -> Path:
    path.write_text(yaml.safe_dump({"name": "early", "model": {"name": "small-cnn", "normalize": "none",
                                                              "params": {"width": 4}},
                                    "data": {"train": str(data)},
                                    "train": {"epochs": 2, "batch_size": 16, "device": "cpu", **train}}))
    return path


# ----------------------------------------------------------------------------- 1. Ctrl-C
class _CtrlC(Standard):
    """Standard training whose first step of epoch ``at`` (0-based) is a Ctrl-C."""

    def __init__(self, at: int = 1) -> None:
        self.at = at

    def train_step(self, ctx, x, y):
        if ctx.epoch == self.at:
            raise KeyboardInterrupt
        return super().train_step(ctx, x, y)


if "test-early-ctrl-c" not in OBJECTIVES:
    OBJECTIVES.add("test-early-ctrl-c", _CtrlC)


def test_ctrl_c_in_process_exits_130_naming_the_epoch_and_the_resume_command(study, tmp_path, capsys):
    cfg = _config(tmp_path / "cfg.yaml", study, objective={"name": "test-early-ctrl-c", "at": 1})
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        main(["--quiet", "train", "--config", str(cfg), "--out", str(run)])
    assert info.value.code == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"interrupted at epoch 2 (1 epoch(s) saved); resume with medxai train --resume --out {run}"]
    assert "interrupted at epoch 2" in (run / "train.log").read_text()
    # the named command continues the run (the objective is switched back to standard training)
    main(["--quiet", "train", "--resume", "--out", str(run), "--set", "train.objective={name: standard}"])
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    # fit itself raises a KeyboardInterrupt that says where it stopped
    with pytest.raises(TrainingInterrupted, match=r"interrupted at epoch 1 \(no checkpoint was written\)") as stop:
        from medxai.data import open_dataset
        from medxai.models import create

        fit(create("small-cnn", 2, 1, normalize="none", width=4), open_dataset(str(study), split="train"), None,
            {"epochs": 2, "batch_size": 16, "device": "cpu", "objective": {"name": "test-early-ctrl-c", "at": 0}})
    assert isinstance(stop.value, KeyboardInterrupt) and stop.value.checkpoint is None


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.mark.slow
def test_sigint_to_a_real_training_process_exits_130_and_stops_a_shell_chain(study, tmp_path):
    """A real ``medxai train`` under ``sh -c "medxai train ... && touch marker"``; SIGINT goes to the
    training process (as Ctrl-C would) once its first epoch is logged."""
    cfg = _config(tmp_path / "cfg.yaml", study, epochs=500)
    run, marker = tmp_path / "run", tmp_path / "marker"
    cmd = (f"{shlex.quote(sys.executable)} -m medxai -q train --config {shlex.quote(str(cfg))} "
           f"--out {shlex.quote(str(run))} && touch {shlex.quote(str(marker))}")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(["sh", "-c", cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 90
        metrics = run / "metrics.jsonl"
        while not (metrics.is_file() and metrics.read_text().strip()):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no epoch logged in 90 s"
            time.sleep(0.05)
        kids = _children(proc.pid)
        assert len(kids) == 1, kids
        os.kill(kids[0], signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (out, err)
    assert not marker.exists()
    assert re.search(rf"interrupted at epoch \d+ \(\d+ epoch\(s\) saved\); resume with medxai train --resume "
                     rf"--out {re.escape(str(run))}$", err.strip()), err
    assert (run / "last.safetensors").is_file()


# ----------------------------------------------------------------------------- 2. nested keys
@pytest.mark.parametrize(("objective", "needle"), [
    ({"name": "adversarial", "epsilon": 0.01},
     r"cfg\.yaml: train\.objective\.epsilon: unknown key for objective 'adversarial' \(known: eps, steps, "
     r"step_size, norm, mix, random_start, warmup_epochs\)"),
    ({"name": "standard", "eps": 0.01}, r"train\.objective\.eps: unknown key for objective 'standard'"),
    ({"name": "trades", "steps": 3}, r"train\.objective\.eps: required by objective 'trades'"),
    ({"name": "adversarial", "eps": 0.01, "steps": 0}, r"train\.objective\.steps must be >= 1"),
    ({"name": "fast", "eps": 0.01, "steps": "many"}, r"train\.objective\.steps: unknown key for objective 'fast'"),
    ({"name": "pgd", "eps": 0.01}, r"train\.objective\.name: unknown objective 'pgd'; known: adversarial"),
    ({"name": "adversarial", "eps": 8}, r"train\.objective\.eps 8 is above 1 \(images are in \[0, 1\]\): "
                                        r"did you mean 8/255\?"),
])
def test_objective_keys_are_checked_when_the_config_is_read(tmp_path, objective, needle):
    cfg = _config(tmp_path / "cfg.yaml", tmp_path / "no-such-data", objective=objective)
    with pytest.raises(ConfigError, match=needle):
        load_run_config(cfg, options=True)
    load_run_config(cfg)  # plain reading (no options check) still works: the train section itself is valid


def test_the_cli_names_the_nested_key_in_one_line_before_reading_data(tmp_path, capsys):
    cfg = _config(tmp_path / "cfg.yaml", tmp_path / "no-such-data", objective={"name": "adversarial", "epsilon": 2})
    with pytest.raises(SystemExit) as info:
        main(["--quiet", "train", "--config", str(cfg), "--out", str(tmp_path / "run")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"{cfg}: train.objective.epsilon: unknown key for objective 'adversarial' (known: eps," in err
    assert not (tmp_path / "run").exists()


def test_fit_checks_the_objective_before_reading_any_sample():
    class Untouchable(torch.utils.data.Dataset):
        task, class_names = "binary", ["a", "b"]

        def __len__(self):
            return 4

        def __getitem__(self, i):
            raise AssertionError("data read before the objective was checked")

    with pytest.raises(ConfigError, match=r"^train\.objective\.epsilon: unknown key for objective 'adversarial'"):
        fit(nn.Linear(2, 2), Untouchable(), None, {"objective": {"name": "adversarial", "eps": 0.1, "epsilon": 2}})
    assert check_objective("adversarial", {"eps": "2/255", "steps": 3}).steps == 3


# ----------------------------------------------------------------------------- 3. budgets
def test_budget_units_are_checked_where_the_norm_is_known():
    with pytest.raises(ConfigError, match=r"^eps 8 is above 1 \(images are in \[0, 1\]\): did you mean 8/255\?$"):
        check_budget(8.0, "linf")
    assert check_budget(8 / 255, "linf") == 8 / 255 and check_budget(1.0, "linf") == 1.0
    assert check_budget(0.5, "l2") == 0.5 and check_budget(3.0, "l2", (3, 224, 224)) == 3.0
    with pytest.raises(ConfigError, match=r"eps 30 \(L2\) is larger than 16, the diameter of the unit cube of "
                                          r"1x16x16 images"):
        check_budget(30.0, "l2", (1, 16, 16))
    assert check_budget(30.0, "l2", (3, 224, 224)) == 30.0
    with pytest.raises(ConfigError, match=r"eps 2000 \(L2\) is above 1000"):
        check_budget(2000.0, "l2")
    # norm-agnostic parsing (the audit config's) keeps valid L2 budgets; only > 1000 is refused there
    assert parse_eps("8") == 8.0 and parse_eps(0.5) == 0.5 and parse_eps("3.0") == 3.0
    assert parse_eps_list("0.5,3") == [0.5, 3.0]
    with pytest.raises(ConfigError, match=r"eps 2040 is above 1000"):
        parse_eps("2040")
    with pytest.raises(ConfigError, match="did you mean 16/255"):
        parse_eps_list("8/255,16", norm="linf")
    with pytest.raises(ConfigError, match=r"objective\.eps 8 is above 1"):
        check_objective("fast", {"eps": "8"})
    with pytest.raises(ConfigError, match=r"objective\.step_size 2 is above 1"):
        check_objective("adversarial", {"eps": "2/255", "step_size": 2})
    assert check_objective("adversarial", {"eps": 3.0, "norm": "l2"}).eps == 3.0


def test_evaluate_refuses_linf_above_one_and_l2_beyond_the_image_before_attacking():
    from medxai.attacks import evaluate

    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.calls = nn.Linear(3 * 4 * 4, 2), 0

        def forward(self, x):
            self.calls += 1
            return self.lin(x.flatten(1))

    model = Counting()
    x, y = torch.rand(6, 3, 4, 4), torch.tensor([0, 1] * 3)
    with pytest.raises(ConfigError, match="did you mean 8/255"):
        evaluate(model, (x, y), [0, 8])
    with pytest.raises(ConfigError, match=r"eps 7 \(L2\) is larger than 6\.928, the diameter of the unit cube of "
                                          r"3x4x4 images"):
        evaluate(model, (x, y), [0, 0.5, 7.0], norm="l2", steps=1)
    assert model.calls == 0  # refused before any forward
    res = evaluate(model, (x, y), [0, 0.5, 3.0], norm="l2", steps=1)  # valid L2 budgets are attacked
    assert res["eps"] == [0.0, 0.5, 3.0] and model.calls > 0


@pytest.fixture(scope="module")
def tiny_run(study, tmp_path_factory):
    """A one-epoch small-cnn run on the study (best.safetensors, last.safetensors)."""
    from medxai.data import open_dataset
    from medxai.models import create

    run = tmp_path_factory.mktemp("early-run") / "run"
    torch.manual_seed(0)
    fit(create("small-cnn", 2, 1, normalize="none", width=4), open_dataset(str(study), split="train"), None,
        {"task": "binary", "epochs": 1, "batch_size": 16, "device": "cpu", "monitor": "train_loss"}, run_dir=run)
    return run


def test_attack_cli_refuses_eps_8_with_one_line_naming_8_over_255(study, tiny_run, tmp_path, capsys):
    _load_commands()
    args = ["--quiet", "attack", "--run", str(tiny_run), "--data", str(study), "--eps", "8,16", "--steps", "1",
            "--n", "4", "-o", str(tmp_path / "out")]
    with pytest.raises(ConfigError, match=r"eps 8 is above 1 \(images are in \[0, 1\]\): did you mean 8/255\?"):
        app(args=args, standalone_mode=False)
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2 and "8/255" in capsys.readouterr().err
    assert not (tmp_path / "out" / "attack.json").exists()


# ----------------------------------------------------------------------------- 4. pretrained
def test_pretrained_takes_a_medxai_runs_own_checkpoints(tiny_run):
    from medxai.models import create
    from medxai.runs import read_checkpoint

    for which in ("best", "last"):  # last.safetensors also holds optimizer/scheduler/rng tensors
        model = create("small-cnn", 2, 1, normalize="none", width=4, pretrained=tiny_run / f"{which}.safetensors")
        report = model.medxai_load_report
        assert report.missing == [] and report.unexpected == [] and len(report.loaded) > 10
        ref = read_checkpoint(tiny_run / f"{which}.safetensors").model_state
        assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())


def test_whole_program_files_as_pretrained_point_to_model_cards(tmp_path):
    from medxai.models import create

    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2)).eval()
    x = torch.rand(1, 1, 8, 8)
    torch.jit.save(torch.jit.trace(net, x), tmp_path / "scripted.pt")
    torch.export.save(torch.export.export(net, (x,)), tmp_path / "exported.pt2")
    (tmp_path / "model.onnx").write_bytes(b"\x08\x09\x12\x07pytorch")  # recognised by its suffix
    card = r"to audit it as it is, write a model card \(medxai audit --model card\.yaml; see README 'Audit your own"
    for name, kind in (("scripted.pt", "a TorchScript archive"), ("exported.pt2", "a torch.export program"),
                       ("model.onnx", "an ONNX model")):
        with pytest.raises(CheckpointError, match=rf"{re.escape(name)}: is {kind}, not a state dict: {card}"):
            create("small-cnn", 2, 1, width=4, pretrained=tmp_path / name)
    # medxai train says so when the config is read, before any data
    cfg = _config(tmp_path / "cfg.yaml", tmp_path / "no-such-data")
    data = yaml.safe_load(cfg.read_text())
    data["model"]["pretrained"] = str(tmp_path / "scripted.pt")
    cfg.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"model\.pretrained: .*scripted\.pt: is a TorchScript archive"):
        load_run_config(cfg, options=True)


# ----------------------------------------------------------------------------- 5. docs and example
EXAMPLE = ROOT / "examples" / "train" / "small-cnn.yaml"


def test_the_train_example_states_every_key_with_its_default_and_trains(study, tmp_path):
    raw = yaml.safe_load(EXAMPLE.read_text())
    sections = {"": (RunConfig, raw), "model": (ModelSection, raw["model"]), "train": (TrainConfig, raw["train"])}
    from medxai.train.config import DataSection

    sections["data"] = (DataSection, raw["data"])
    for where, (cls, values) in sections.items():
        assert set(cls.model_fields) <= set(values), (where, set(cls.model_fields) - set(values))
    chosen = {("", "name"), ("model", "name"), ("model", "normalize"), ("model", "params"), ("data", "train")}
    for where, (cls, values) in sections.items():
        for key, field in cls.model_fields.items():
            if (where, key) in chosen or key in ("model", "data", "train", "objective"):
                continue
            default = field.get_default(call_default_factory=True)
            value = values[key]
            assert value == (list(default) if isinstance(default, tuple) else default), (where, key, value, default)
    assert raw["train"]["objective"] == {"name": "standard"}
    # the commented objective lines are valid objective options
    for line in re.findall(r"#\s+(\w+):\s+(\{name: .*)", EXAMPLE.read_text()):
        text = line[1]
        if text.count("{") != text.count("}"):
            continue  # continued on the next comment line
        opts = yaml.safe_load(text)
        check_objective(opts.pop("name"), opts)
    cfg = load_run_config(EXAMPLE, [f"data.train={study}", *TINY[1::2]], options=True)
    assert cfg.train.epochs == 1 and cfg.model.params == {"width": 4, "dropout": 0.0}
    run = tmp_path / "run"
    main(["--quiet", "train", "--config", str(EXAMPLE), "--out", str(run), "--set", f"data.train={study}", *TINY])
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def _expand(text: str, env: dict[str, str]) -> str:
    """``$NAME`` / ``${NAME}`` of ``env`` substituted (others left as written)."""
    return re.sub(r"\$\{?(\w+)\}?", lambda v: env.get(v.group(1), v.group(0)), text)


def _doc_commands(text: str) -> list[list[str]]:
    """The ``medxai data synth`` and ``medxai train`` commands of the bash blocks, continuation lines
    joined and simple shell variables of the block (``RUN=...``, ``[ -f F ] && X=...``) substituted."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        env: dict[str, str] = {}
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if m := re.fullmatch(r"([A-Z_]+)=(\S*)", line):
                env[m.group(1)] = shlex.split(m.group(2))[0] if m.group(2) not in ('""', "") else ""
                continue
            if m := re.fullmatch(r'\[ -f "(.+)" \] && ([A-Z_]+)="(.*)"', line):
                if Path(_expand(m.group(1), env)).is_file():
                    env[m.group(2)] = m.group(3)
                continue
            if "medxai train" not in line and "medxai data synth" not in line:
                continue
            tokens = shlex.split(_expand(line, env))
            start = next(i for i, t in enumerate(tokens) if t == "medxai" and tokens[i + 1] in ("train", "data"))
            commands.append([t for t in tokens[start + 1:] if t])
    return commands


@pytest.mark.slow
def test_training_commands_of_docs_scaling_run_as_written(tmp_path, monkeypatch):
    """Every ``medxai train`` command of docs/scaling.md (and its ``medxai data synth``) runs at tiny
    size: sizes and epochs are overridden by appended options. torchrun / srun lines start 4 GPU
    processes, so their ``medxai train ...`` part runs in this process instead (one process: the
    same command line; DDP itself is tested in tests/test_distributed.py)."""
    text = (ROOT / "docs" / "scaling.md").read_text()
    assert "examples/train/small-cnn.yaml" in text
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples" / "train").mkdir(parents=True)
    shutil.copy(EXAMPLE, tmp_path / "examples" / "train" / "small-cnn.yaml")
    epochs: dict[str, int] = {}
    ran = []
    # the SLURM block reads $RUN/last.safetensors when it is parsed: parse after each run
    for i in range(len(_doc_commands(text))):
        args = _doc_commands(text)[i]
        if args[0] == "data":
            main(["--quiet", *args, "--n", "48", "--size", "16"])
            continue
        out = args[args.index("--out") + 1]
        epochs[out] = epochs.get(out, 0) + 1
        main(["--quiet", *args, *TINY[2:], "--set", f"train.epochs={epochs[out]}"])
        assert len((tmp_path / out / "metrics.jsonl").read_text().splitlines()) == epochs[out]
        ran.append(args)
    assert ["--resume", "--out", "runs/small-cnn"] == ran[2][1:]
    assert len(ran) == 4  # one process, torchrun, torchrun --resume, SLURM


def test_attack_constructors_refuse_linf_budgets_above_one():
    from torch import nn

    from medxai.attacks import APGD, PGD
    from medxai.errors import ConfigError

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    for cls in (PGD, APGD):
        with pytest.raises(ConfigError, match="did you mean 8/255"):
            cls(model, eps=8)
    PGD(model, eps=3.0, norm="l2")  # an L2 budget of 3 is a budget
    PGD(model, eps=torch.tensor([1 / 255, 2 / 255]))  # per-sample budgets
