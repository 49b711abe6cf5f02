"""Dataset-scale explanations and scores (``medxai.distributed``): peak memory against dataset size,
and 1 against 2 processes under torchrun (gloo on CPU).

Memory rows: a fresh process explains N synthetic 128-px CXR images (saliency and Grad-CAM of a
small-cnn, width 8) into a float16 store and scores them (pointing game, energy pointing game,
mask AUROC, sparseness), one thread. ``peak_rss_mib`` is the process's peak resident set
(``ru_maxrss``), ``base_rss_mib`` its resident set after imports and model creation. The bound
is fixed (``BOUND_MIB``); 10,000 images must not raise the peak of 2,000 by more than
``GROWTH_MIB`` (the store keeps one shard in memory, whatever N is; keeping every map would add
~1.3 GB at 10,000). The children run with glibc's mmap threshold fixed at 128 KiB: with its
default dynamic threshold, freed batch buffers stay in the heap and the peak becomes a noisy
extreme of allocator state (RSS sampled after every 4th shard wanders by +-35 MiB around a flat
level, so the peak of a longer run is a few tens of MiB higher by chance alone).

Scaling rows: the same explanation job, and one epoch of small-cnn training (global batch 64),
in 1 process and in 2 processes (1 thread each); ``ratio`` = 1-process time / 2-process time
(the speed-up; > 1 is faster). No peer library runs distributed explanation, so ``peer`` is
"1 process".
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from benchmarks._harness import row

BOUND_MIB = 1024.0
GROWTH_MIB = 32.0
ROOT = Path(__file__).resolve().parents[1]

MEMORY_CHILD = textwrap.dedent('''
    import json, resource, sys, time
    import torch
    torch.set_num_threads(1)
    from medxai.data import SyntheticDataset
    from medxai.distributed import explain_dataset, score_store
    from medxai.models import create

    n, size, store = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

    def rss_mib():
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    ds = SyntheticDataset("cxr-pneumonia", n, size=size, split="test")
    torch.manual_seed(0)
    model = create("small-cnn", 2, in_chans=1, width=8, normalize="none")
    ds[0]
    base = rss_mib()
    t0, c0 = time.perf_counter(), time.process_time()
    run = explain_dataset(model, ds, ["saliency", "gradcam"], store, shard_size=256, batch_size=64)
    t1 = time.perf_counter()
    res = score_store(store, ["pointing_game", "energy_pointing_game", "mask_auroc", "sparseness"], n_boot=200)
    t2, c2 = time.perf_counter(), time.process_time()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"base": base, "peak": peak, "explain_s": t1 - t0, "score_s": t2 - t1, "cpu_s": c2 - c0,
                      "shards": run.n_shards, "rows": len(res["summary"])}))
''')

SCALING_CHILD = textwrap.dedent('''
    import json, sys, time
    import torch
    torch.set_num_threads(1)
    from medxai import distributed
    from medxai.data import SyntheticDataset
    from medxai.distributed import explain_dataset
    from medxai.models import create
    from medxai.train import fit

    n_explain, n_train, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    info = distributed.setup()
    ds = SyntheticDataset("cxr-pneumonia", n_explain, size=128, split="test")
    torch.manual_seed(0)
    model = create("small-cnn", 2, in_chans=1, width=8, normalize="none")
    distributed.barrier()
    t0 = time.perf_counter()
    explain_dataset(model, ds, ["saliency", "gradcam"], out + "/store", shard_size=max(4, n_explain // 8),
                    batch_size=32)
    t_explain = time.perf_counter() - t0
    train = SyntheticDataset("cxr-pneumonia", n_train, size=64, split="train")
    torch.manual_seed(0)
    net = create("small-cnn", 2, in_chans=1, normalize="none")
    res = fit(net, train, None, {"task": "binary", "epochs": 1, "batch_size": 64 // info.world_size,
                                 "monitor": "train_loss"})
    if info.is_main:
        with open(out + "/result.json", "w") as fh:
            json.dump({"explain_s": t_explain, "train_s": res.train_time_s, "world": info.world_size}, fh)
''')


def _env(fixed_mmap: bool = False) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT)}
    if fixed_mmap:  # glibc: buffers >= 128 KiB are mmap'd and returned on free, so RSS tracks live memory
        env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _memory(sizes: tuple[int, ...], size: int, *, parallel: bool) -> list[dict]:
    """Run the memory child once per dataset size, each in a fresh process (all at once if
    ``parallel``: peak RSS is per process, so only the times are affected)."""
    with tempfile.TemporaryDirectory(prefix="medxai-bench-scaling-") as tmp:
        script = Path(tmp) / "child.py"
        script.write_text(MEMORY_CHILD)

        def start(k: int, n: int) -> subprocess.Popen:
            return subprocess.Popen([sys.executable, str(script), str(n), str(size), str(Path(tmp) / f"store{k}")],
                                    env=_env(fixed_mmap=True), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)

        results = []
        procs = [start(k, n) for k, n in enumerate(sizes)] if parallel else []
        for k, n in enumerate(sizes):
            proc = procs[k] if parallel else start(k, n)
            out, err = proc.communicate(timeout=3600)
            if proc.returncode != 0:
                raise RuntimeError(f"memory child ({n} images) failed: {err[-2000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scaling(world: int, n_explain: int, n_train: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="medxai-bench-scaling-") as tmp:
        script = Path(tmp) / "child.py"
        script.write_text(SCALING_CHILD)
        args = [str(script), str(n_explain), str(n_train), tmp]
        if world == 1:
            cmd = [sys.executable, *args]
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={world}",
                   "--master_addr=127.0.0.1",
                   f"--master_port={_free_port()}", *args]
        proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"scaling child ({world} processes) failed: {proc.stderr[-2000:]}")
        return json.loads((Path(tmp) / "result.json").read_text())


def run(quick: bool = False) -> dict:
    """Rows: peak RSS at two dataset sizes (bounded, not growing), then 1 vs 2 process times."""
    size = 32 if quick else 128
    sizes = (32, 96) if quick else (2000, 10000)
    rows = []
    first = None
    for n, m in zip(sizes, _memory(sizes, size, parallel=quick), strict=True):
        growth = None if first is None else m["peak"] - first["peak"]
        ok = m["peak"] <= BOUND_MIB and (growth is None or growth <= GROWTH_MIB)
        rows.append(row(f"explain+score {n} x {size}px (saliency, gradcam; 4 metrics)", None,
                        m["explain_s"] + m["score_s"], None, images=n,
                        note=f"fresh process, one thread, shards of 256, float16; bound {BOUND_MIB:.0f} MiB"
                             + ("" if growth is None else f", growth vs {sizes[0]} <= {GROWTH_MIB:.0f} MiB"),
                        peak_rss_mib=m["peak"], base_rss_mib=m["base"], bound_mib=BOUND_MIB, growth_mib=growth,
                        within_bound=ok, explain_s=m["explain_s"], score_s=m["score_s"], cpu_s=m["cpu_s"]))
        rows[-1]["met"] = ok
        first = first or m
    n_explain, n_train = (16, 64) if quick else (512, 2048)
    one, two = _scaling(1, n_explain, n_train), _scaling(2, n_explain, n_train)
    cores = os.cpu_count()
    rows.append(row(f"explain {n_explain} x 128px, 2 processes", "1 process", two["explain_s"], one["explain_s"],
                    images=n_explain, note=f"torchrun gloo, 1 thread per process, {cores} cores; ratio = speed-up"))
    rows.append(row(f"train 1 epoch {n_train} x 64px, 2 processes (global batch 64)", "1 process", two["train_s"],
                    one["train_s"], images=n_train,
                    note=f"DDP gloo, 1 thread per process, {cores} cores; ratio = speed-up"))
    return {"kind": "scaling", "rows": rows,
            "notes": "medxai_s of the memory rows is the wall time of explain + score; peak_rss_mib is "
                     "the process's ru_maxrss. Scaling rows: wall seconds of the job inside the processes "
                     "(start-up excluded); on a machine shared with other work the speed-up is a lower bound."}
