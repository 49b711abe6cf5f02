"""Crash safety: ``kill -9`` a real ``medxai train`` run at seeded random moments and resume it.

A driver process (``python -c``) imports medxai once and forks one child per training process;
each child runs the real command line (``medxai train --config CFG --out RUN [--resume]``) on a
study written to disk, so no import time is paid per kill. The driver SIGKILLs the child after a
seeded random moment (after a random number of finished epochs, plus a random fraction of an
epoch's time), checks that every JSON and safetensors file of the run folder parses (a torn file
fails), resumes (or restarts when the kill came before the first checkpoint), and at the end
compares every tensor of each final ``last.safetensors`` / ``best.safetensors`` bitwise with the
uninterrupted run's.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

DRIVER = r'''
import json, os, random, signal, sys, time, traceback
from pathlib import Path

work, n_kills, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
import yaml
from safetensors.numpy import load_file
import medxai.cli, medxai.cli.train, medxai.data, medxai.models, medxai.train  # noqa: F401  (imports only:
import torch._dynamo, torch.optim, sklearn.metrics, pandas, rich.progress  # noqa: F401  no torch op here)


def child(args):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            import torch
            torch.set_num_threads(1)
            medxai.cli.main(["-q", *args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        os._exit(code)
    return pid


def train(run, resume=False):
    return child(["train", "--config", str(work / "cfg.yaml"), "--out", str(run)] + (["--resume"] if resume else []))


def check_files(run):
    """Every visible JSON / JSONL / YAML / safetensors file parses completely; returns what was seen."""
    seen = {}
    for p in sorted(run.iterdir()):
        if p.name.startswith("."):
            continue  # temporary files of atomic writes (never read by medxai)
        if p.suffix == ".safetensors":
            t = load_file(str(p))
            seen[p.name] = len(t)
        elif p.suffix == ".yaml":
            assert isinstance(yaml.safe_load(p.read_text()), dict), p
            seen[p.name] = 1
        elif p.suffix == ".json":
            json.loads(p.read_text())
            seen[p.name] = 1
        elif p.suffix == ".jsonl":
            seen[p.name] = len([json.loads(s) for s in p.read_text().splitlines()])
    return seen


def epochs_in(run):
    p = run / "last.safetensors"
    if not p.is_file():
        return 0
    from safetensors import safe_open
    with safe_open(str(p), framework="numpy") as fh:
        return json.loads(fh.metadata()["train"])["epoch"]


def lines(run):
    p = run / "metrics.jsonl"
    try:
        return len(p.read_text().splitlines()) if p.is_file() else 0
    except OSError:
        return 0


t0 = time.perf_counter()
ref = work / "ref"
pid = train(ref)
_, status = os.waitpid(pid, 0)
t_ref = time.perf_counter() - t0
assert os.waitstatus_to_exitcode(status) == 0, "reference run failed"
rng = random.Random(seed)
stages = rng.sample(range(6), 6) + [rng.randrange(0, 6) for _ in range(max(0, n_kills - 6))]  # every stage
trials = []
for i in range(n_kills):
    run = work / f"kill{i}"
    # a seeded random moment inside the run: after `stage` finished epochs (0..5), plus a random
    # fraction of one epoch's time. Anchoring on progress instead of on wall time keeps the kills
    # inside the run whatever the machine's speed (a warm fork trains faster than the timed one).
    stage, frac = stages[i], rng.uniform(0.05, 0.9)
    pid = train(run)
    t_start = time.perf_counter()
    finished = False
    while lines(run) < stage and not finished:
        finished = os.waitpid(pid, os.WNOHANG)[0] != 0
        time.sleep(0.002)
    time.sleep(frac * t_ref / 8)
    delay = time.perf_counter() - t_start
    finished = finished or os.waitpid(pid, os.WNOHANG)[0] != 0
    if not finished:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    seen = check_files(run) if run.is_dir() else {}
    tmp = sorted(p.name for p in run.iterdir() if p.name.startswith(".")) if run.is_dir() else []
    at = epochs_in(run)
    pid = train(run, resume=at > 0)
    _, status = os.waitpid(pid, 0)
    trials.append({"delay": round(delay, 3), "stage": stage, "finished_before_kill": finished, "epochs_at_kill": at,
                   "files_at_kill": seen, "temp_files_at_kill": tmp,
                   "resume_exit": os.waitstatus_to_exitcode(status), "final_files": check_files(run)})

# all forks done: compare tensors (now torch may start threads)
import torch
from safetensors.torch import load_file as load_pt

diffs = {}
for i in range(n_kills):
    for which in ("last", "best"):
        a, b = load_pt(str(ref / f"{which}.safetensors")), load_pt(str(work / f"kill{i}" / f"{which}.safetensors"))
        bad = sorted(k for k in a.keys() | b.keys() if k not in a or k not in b or not torch.equal(a[k], b[k]))
        diffs[f"kill{i}/{which}"] = bad
hist = lambda r: [{k: v for k, v in json.loads(s).items() if k != "time_s"}
                  for s in (r / "metrics.jsonl").read_text().splitlines()]
same_history = [hist(work / f"kill{i}") == hist(ref) for i in range(n_kills)]
n_tensors = len(load_pt(str(ref / "last.safetensors")))
print(json.dumps({"t_ref": t_ref, "trials": trials, "diffs": diffs, "same_history": same_history,
                  "n_tensors": n_tensors, "ref_log": (ref / "train.log").read_text(),
                  "work_dir": sorted(p.name for p in work.iterdir())}))
'''

CFG = """\
name: kill
model: {{name: small-cnn, normalize: none}}
data: {{train: {study}, val_split: val}}
train: {{epochs: 6, batch_size: 8, lr: 0.01, seed: 5, device: cpu, optimizer: adamw, scheduler: cosine,
         warmup_epochs: 0.5, grad_clip: 1.0, monitor: val_loss}}
"""


@pytest.fixture(scope="module")
def kill_campaign(tmp_path_factory):
    from medxai.data import write_synthetic

    work = tmp_path_factory.mktemp("kill")
    write_synthetic("cxr-pneumonia", work / "study", {"train": 40, "val": 8}, size=32, seed=0)
    (work / "cfg.yaml").write_text(CFG.format(study=work / "study"))
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(work), "10", "20261201"], capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_kill_nine_at_ten_random_moments_then_resume_is_bitwise_identical(kill_campaign):
    res = kill_campaign
    trials = res["trials"]
    assert len(trials) == 10
    assert res["n_tensors"] > 10  # model, optimizer, scheduler and RNG tensors are all compared
    assert all(t["resume_exit"] == 0 for t in trials), trials
    # every final checkpoint (last and best) equals the uninterrupted run's, tensor for tensor
    assert all(v == [] for v in res["diffs"].values()), res["diffs"]
    assert all(res["same_history"])
    # the kills really interrupted runs, at different stages (before or between checkpoints)
    killed = [t for t in trials if not t["finished_before_kill"]]
    assert len(killed) >= 7, trials
    assert len({t["epochs_at_kill"] for t in killed}) >= 4, trials
    assert any(0 < t["epochs_at_kill"] < 6 for t in killed), trials
    # nothing was written outside the run folders named by --out
    assert res["work_dir"] == sorted(["cfg.yaml", "study", "ref", *(f"kill{i}" for i in range(10))])
    # every file present at a kill parsed (check_files raised otherwise); final runs are complete
    for t in trials:
        assert t["final_files"]["metrics.jsonl"] == 6
        assert {"last.safetensors", "best.safetensors", "model.json", "summary.json"} <= set(t["final_files"])
