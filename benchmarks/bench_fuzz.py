"""Fuzzing medxai's decoders and parsers with seeded mutations of valid files.

Targets: ``load_image`` on PNG, JPEG, TIFF and DICOM bytes (and DICOMs whose image attributes,
Rows / Columns / frames / bits / photometric / rescale / window, are set to hostile values); the
CSV layout and the CheXpert CSV (``open_dataset`` on a dataset folder whose CSV is mutated); the
YAML files of ``medxai train`` (``load_run_config``), ``medxai audit`` (``load_config``) and
dataset specs (``open_dataset`` on a ``.yaml``), and the ``medxai.json`` dataset manifest. Each
input is a valid seed file changed by seeded byte mutations (bit flips, interesting bytes and
integers, truncation, deletion, duplication, insertion, splicing; PNG chunks get their CRCs fixed
half the time so the decoder goes past the checksum; text formats also get hostile tokens: ``../``,
YAML tags and alias bombs, NaN, huge numbers, NUL, quotes).

The contract checked: every input gives a valid result (an image float32 (H, W, 1|3) in [0, 1]; a
dataset whose records stay inside its root; a validated config) or ``DataError`` /
``ConfigError``; anything else is counted as ``unexpected`` with its type. Each input runs under a
wall-clock alarm (``TIME_LIMIT_S``): a hang is counted, not waited for; the address space is
capped (``MEMORY_HEADROOM``) so a memory blow-up becomes a counted ``MemoryError``. Rows record
the inputs, outcomes, exceptions by type, maximum and mean time per input and peak RSS.

``run(quick)``: 100 inputs per target (quick) or 10,000 (full).
"""

from __future__ import annotations

import io
import json
import logging
import random
import resource
import shutil
import signal
import struct
import tempfile
import time
import warnings
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medxai.errors import ConfigError, DataError, ModelError

TIME_LIMIT_S = 5.0
MEMORY_HEADROOM = 3 * 2**30  # bytes of address space above what the process holds at the start
N_FULL, N_QUICK = 10_000, 100
ALLOWED = (DataError, ConfigError, ModelError)

INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0xFE, 0x20, 0x0A, 0x22, 0x2C)
INTERESTING_INTS = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 60000, 0x7FFFFFFF,
                    0x80000000, 0xFFFFFFFF)
HOSTILE_TOKENS = ("../", "../../etc/passwd", "/etc/passwd", "\x00", '"', "'", ",", "\n", "\r\n", "\t", ":", ": ",
                  "- ", "{", "}", "[", "]", "nan", ".nan", "-.inf", "1e309", "-1", "99999999999999999999",
                  "!!python/object/apply:os.system ['touch /tmp/medxai-fuzz-pwned']", "!!binary AAAA",
                  "&a [*a]", "*undefined_alias", "<script>alert(1)</script>", "\u202e", "é", "\ufeff", "~",
                  "null", "true", "0x10", "2/255", "=" * 300)


class _Timeout(BaseException):
    """Raised by the per-input alarm (a BaseException, so no decoder's ``except Exception`` eats it)."""


def _alarm(signum: int, frame: Any) -> None:
    raise _Timeout


# ---------------------------------------------------------------------------------- mutations


def _fix_png_crcs(data: bytes) -> bytes:
    """Recompute every chunk's CRC (lengths as found; stops at the first chunk that does not fit)."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data
    out, i = bytearray(data[:8]), 8
    while i + 8 <= len(data):
        (n,) = struct.unpack(">I", data[i:i + 4])
        end = i + 8 + n
        if end + 4 > len(data):
            out += data[i:]
            return bytes(out)
        kind_data = data[i + 4:end]
        out += data[i:end] + struct.pack(">I", zlib.crc32(kind_data) & 0xFFFFFFFF)
        i = end + 4
    out += data[i:]
    return bytes(out)


def mutate(data: bytes, rng: random.Random, seeds: list[bytes], *, text: bool = False, png: bool = False) -> bytes:
    """1-4 seeded mutations of ``data`` (see the module docstring)."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(10 if text else 8)
        n = len(buf)
        if op == 0 and n:  # bit flips
            for _ in range(rng.randint(1, 8)):
                buf[rng.randrange(n)] ^= 1 << rng.randrange(8)
        elif op == 1 and n:  # interesting bytes
            for _ in range(rng.randint(1, 4)):
                buf[rng.randrange(n)] = rng.choice(INTERESTING_BYTES)
        elif op == 2 and n >= 4:  # an interesting integer, 2 or 4 bytes, either endianness
            width = rng.choice((2, 4))
            v = rng.choice(INTERESTING_INTS) & (0xFFFF if width == 2 else 0xFFFFFFFF)
            at = rng.randrange(n - width + 1)
            buf[at:at + width] = v.to_bytes(width, rng.choice(("big", "little")))
        elif op == 3 and n:  # truncation
            del buf[rng.randrange(n):]
        elif op == 4 and n:  # delete a span
            a = rng.randrange(n)
            del buf[a:a + rng.randint(1, max(1, n // 8))]
        elif op == 5 and n:  # duplicate a span
            a = rng.randrange(n)
            span = buf[a:a + rng.randint(1, max(1, n // 8))]
            b = rng.randrange(n + 1)
            buf[b:b] = span * rng.randint(1, 4)
        elif op == 6:  # random bytes inserted
            b = rng.randrange(n + 1)
            buf[b:b] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))
        elif op == 7 and seeds:  # splice with another seed
            other = rng.choice(seeds)
            if other and n:
                a, b = rng.randrange(n), rng.randrange(len(other))
                buf = buf[:a] + bytearray(other[b:])
        elif op >= 8:  # hostile tokens (text formats)
            tok = rng.choice(HOSTILE_TOKENS).encode("utf-8")
            b = rng.randrange(n + 1)
            if op == 8:
                buf[b:b] = tok
            else:
                buf[b:b + len(tok)] = tok
    out = bytes(buf)
    if png and rng.random() < 0.5:
        out = _fix_png_crcs(out)
    return out


#: Image-pixel-module attributes and hostile values for the structure-aware DICOM mutator.
DICOM_TAGS: dict[str, tuple[Any, ...]] = {
    "Rows": (0, 1, 3, 65535, 60000), "Columns": (0, 1, 7, 65535),
    "NumberOfFrames": (0, 1, 2, 1000, 2**31 - 1, -1, "x"),
    "BitsAllocated": (0, 1, 8, 12, 16, 32, 64), "BitsStored": (0, 1, 7, 12, 16, 17, 33, 64),
    "HighBit": (0, 7, 15, 63), "PixelRepresentation": (0, 1, 2),
    "SamplesPerPixel": (0, 1, 2, 3, 4), "PlanarConfiguration": (0, 1, 2),
    "PhotometricInterpretation": ("MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL", "YBR_FULL_422",
                                  "", "JUNK"),
    "RescaleSlope": ("0", "1", "-1", "1e-30", "1e308", "nan", "inf", "-inf"),
    "RescaleIntercept": ("0", "-1024", "1e308", "nan", "-inf"),
    "WindowCenter": ("0", "40", "-1e308", "nan", "inf"), "WindowWidth": ("0", "1", "-5", "1e-30", "nan", "inf"),
    "VOILUTFunction": ("LINEAR", "SIGMOID", "LINEAR_EXACT", "JUNK"),
}


def dicom_tag_mutator(data: bytes, rng: random.Random, seeds: list[bytes]) -> bytes:
    """Set 1-4 image attributes of a parsed DICOM to hostile values (what byte flips rarely reach),
    or drop one; sometimes add byte mutations on top."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            for _ in range(rng.randint(1, 4)):
                key = rng.choice(sorted(DICOM_TAGS))
                if rng.random() < 0.15 and key in ds:
                    delattr(ds, key)
                else:
                    setattr(ds, key, rng.choice(DICOM_TAGS[key]))
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=False)
        out = buf.getvalue()
    except Exception:  # a value pydicom cannot write: fall back to byte mutations
        out = data
    if rng.random() < 0.2:
        out = mutate(out, rng, seeds)
    return out


# ---------------------------------------------------------------------------------- seeds


def _pil_bytes(arr: np.ndarray, fmt: str, **kw: Any) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def image_seeds() -> dict[str, list[bytes]]:
    """Small valid files of each format (8/16 bit, gray/RGB/palette, compressed variants)."""
    from PIL import Image
    from pydicom.data import get_testdata_file

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (9, 11), dtype=np.uint8)
    g16 = rng.integers(0, 65536, (8, 7), dtype=np.uint16)
    pal = io.BytesIO()
    Image.fromarray(rgb).convert("P").save(pal, format="PNG")
    png = [_pil_bytes(rgb, "PNG"), _pil_bytes(gray, "PNG"), _pil_bytes(g16, "PNG"), pal.getvalue(),
           _pil_bytes(np.dstack([rgb, gray[:12, :10, None].repeat(2, 0)[:12]]), "PNG")]
    jpeg = [_pil_bytes(rgb, "JPEG", quality=90), _pil_bytes(gray, "JPEG"),
            _pil_bytes(rgb, "JPEG", progressive=True), _pil_bytes(np.kron(rgb, np.ones((2, 2, 1), np.uint8)), "JPEG",
                                                                 subsampling=2)]
    tiff = [_pil_bytes(rgb, "TIFF"), _pil_bytes(g16, "TIFF"), _pil_bytes(gray, "TIFF", compression="tiff_lzw"),
            _pil_bytes(gray, "TIFF", compression="tiff_adobe_deflate"), _pil_bytes(rgb, "TIFF", compression="packbits")]
    # bundled pydicom test files only (other names would trigger a download)
    dicom = [Path(get_testdata_file(n)).read_bytes() for n in ("MR_small.dcm", "CT_small.dcm", "MR_small_RLE.dcm",
                                                                "SC_rgb_rle.dcm", "rtdose.dcm")]
    return {"png": png, "jpeg": jpeg, "tiff": tiff, "dicom": dicom}


def _images(root: Path, rels: list[str]) -> None:
    rng = np.random.default_rng(1)
    for i, rel in enumerate(rels):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(_pil_bytes(rng.integers(0, 256, (8, 8), dtype=np.uint8) // (i + 1), "PNG"))


CSV_SEED = "image,label,split\na.png,NORMAL,train\nb.png,PNEUMONIA,val\nsub/c.png,NORMAL,test\nd.png,PNEUMONIA,train\n"
CHEXPERT_SEED = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Atelectasis,Cardiomegaly,Consolidation,Edema,Pleural Effusion\n"
    "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.png,Female,68,Frontal,AP,1.0,,,,0.0,\n"
    "CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.png,Male,87,Frontal,AP,,-1.0,1.0,,-1.0,-1.0\n"
    "CheXpert-v1.0-small/train/patient00002/study1/view2_lateral.png,Male,87,Lateral,,,,1.0,,,1.0\n"
    "CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.png,Female,41,Frontal,PA,,0.0,,1.0,,0.0\n")
TRAIN_SEED = """\
name: fuzz
out: runs
model: {name: small-cnn, normalize: none, params: {}}
data:
  train: data/study
  val_split: val
  options: {uncertainty: ones}
train:
  epochs: 3
  batch_size: 8
  lr: 1.0e-3
  optimizer: adamw
  scheduler: cosine
  warmup_epochs: 0.5
  monitor: val_balanced_accuracy
  early_stopping: {patience: 2}
  objective: {name: adversarial, eps: 0.0078, steps: 3}
"""
AUDIT_SEED = """\
name: fuzz-audit
seed: 0
data:
  synthetic: {study: cxr-pneumonia, size: 32, n_train: 64, n_val: 16, n_test: 16, shortcut: 0.9}
models:
  - {name: standard, arch: small-cnn, train: {epochs: 1}}
  - {name: robust, arch: small-cnn, init_from: standard, train: {objective: {name: trades, eps: 2/255}}}
attack: {eps: [0, 1/255, "4/255"], steps: 2, n: 16}
corruption: {names: [gaussian_noise], severities: [1, 3], n: 8}
explain: {methods: [saliency, gradcam], n_show: 2, n_score: 8, options: {gradcam: {layer: auto}}}
score: {metrics: [pointing_game], sanity_methods: [saliency], n_boot: 10, compare: [[standard, robust]]}
"""
SPEC_SEED = """\
layout: csv
csv: labels.csv
image_column: image
label_column: label
split_column: split
classes: [NORMAL, PNEUMONIA]
max_pixels: 1000000
"""
MANIFEST_SEED = json.dumps({"format": "medxai-dataset", "version": 1, "task": "binary",
                            "class_names": ["NORMAL", "PNEUMONIA"],
                            "spec": {"layout": "csv", "csv": "labels.csv", "classes": ["NORMAL", "PNEUMONIA"],
                                     "split_column": "split"}}, indent=1)


# ---------------------------------------------------------------------------------- targets


def _check_image(x: Any) -> None:
    assert isinstance(x, np.ndarray) and x.dtype == np.float32 and x.ndim == 3 and x.shape[-1] in (1, 3), \
        f"bad image {type(x).__name__} {getattr(x, 'shape', None)} {getattr(x, 'dtype', None)}"
    assert x.size > 0 and np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1, "image values outside [0, 1]"


def _check_dataset(ds: Any, root: Path) -> None:
    r = root.resolve()
    for rec in getattr(ds, "records", []):
        assert rec.path.resolve().is_relative_to(r), f"record outside the root: {rec.path}"
    labels = np.asarray(ds.labels)
    assert len(labels) == len(ds)
    if len(ds) and labels.ndim == 1:
        assert labels.min() >= 0 and labels.max() < len(ds.class_names)


class Target:
    """One decoder / parser: seeds, the call on a file, the validity check of its result."""

    def __init__(self, name: str, seeds: list[bytes], file: Path, call: Callable[[Path], Any],
                 check: Callable[[Any], None], *, text: bool = False, png: bool = False,
                 mutator: Callable[[bytes, random.Random, list[bytes]], bytes] | None = None) -> None:
        self.name, self.seeds, self.file, self.call, self.check = name, seeds, file, call, check
        self.text, self.png, self.mutator = text, png, mutator

    def mutate(self, data: bytes, rng: random.Random) -> bytes:
        if self.mutator is not None:
            return self.mutator(data, rng, self.seeds)
        return mutate(data, rng, self.seeds, text=self.text, png=self.png)


def targets(work: Path) -> list[Target]:
    from medxai.data import load_image, open_dataset
    from medxai.pipeline.config import load_config
    from medxai.train.config import load_run_config

    seeds = image_seeds()
    out = []
    for kind, suffix in (("png", ".png"), ("jpeg", ".jpg"), ("tiff", ".tif"), ("dicom", ".dcm")):
        out.append(Target(kind, seeds[kind], work / f"img{suffix}", lambda p: load_image(p, max_pixels=4_000_000),
                          _check_image, png=kind == "png"))
    out.append(Target("dicom-tags", seeds["dicom"][:4], work / "tags.dcm",
                      lambda p: load_image(p, max_pixels=4_000_000), _check_image, mutator=dicom_tag_mutator))
    csv_root = work / "csvdata"
    _images(csv_root, ["a.png", "b.png", "sub/c.png", "d.png"])
    out.append(Target("csv", [CSV_SEED.encode()], csv_root / "labels.csv",
                      lambda p: open_dataset(p, on_error="skip"), lambda ds: _check_dataset(ds, csv_root), text=True))
    cx_root = work / "chexpert"
    _images(cx_root, [line.split(",")[0].split("/", 1)[1] for line in CHEXPERT_SEED.splitlines()[1:]])
    out.append(Target("chexpert", [CHEXPERT_SEED.encode()], cx_root / "train.csv",
                      lambda p: open_dataset({"layout": "chexpert", "root": str(cx_root), "findings": "five",
                                              "uncertainty": "ones"}, on_error="skip"),
                      lambda ds: _check_dataset(ds, cx_root), text=True))

    def config_ok(cfg: Any) -> None:
        json.dumps(cfg.model_dump(mode="json"))  # what fit / audit write out: must serialise in bounded size

    out.append(Target("train-yaml", [TRAIN_SEED.encode()], work / "train.yaml", load_run_config, config_ok, text=True))
    out.append(Target("audit-yaml", [AUDIT_SEED.encode()], work / "audit.yaml", load_config, config_ok, text=True))
    spec_root = work / "specdata"
    _images(spec_root, ["a.png", "b.png", "sub/c.png", "d.png"])
    (spec_root / "labels.csv").write_text(CSV_SEED)
    out.append(Target("dataset-yaml", [SPEC_SEED.encode()], spec_root / "spec.yaml",
                      lambda p: open_dataset(p, on_error="skip"), lambda ds: _check_dataset(ds, spec_root), text=True))
    man_root = work / "mandata"
    _images(man_root, ["a.png", "b.png", "sub/c.png", "d.png"])
    (man_root / "labels.csv").write_text(CSV_SEED)
    out.append(Target("manifest-json", [MANIFEST_SEED.encode()], man_root / "medxai.json",
                      lambda p: open_dataset(p.parent, on_error="skip"), lambda ds: _check_dataset(ds, man_root),
                      text=True))
    out += _card_targets(work)
    return out


CARD_SEED = """path: m.onnx
format: onnx
task: binary
classes: [NORMAL, PNEUMONIA]
positive_class: PNEUMONIA
input: {size: [8, 8], channels: 1, normalize: {mean: [0.5], std: [0.25]}}
output: logits
"""


def _card_targets(work: Path) -> list[Target]:
    """The model-card loader: the card YAML mutated (the model file fixed), and the ONNX bytes mutated."""
    import torch

    from medxai.cards import load_card

    d = work / "card"
    d.mkdir(parents=True, exist_ok=True)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten()).eval()
    torch.onnx.export(net, (torch.rand(1, 1, 8, 8),), str(d / "m.onnx"), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    (d / "card.yaml").write_text(CARD_SEED)
    onnx_dir = work / "onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    (onnx_dir / "card.yaml").write_text(CARD_SEED)

    def model_ok(loaded: Any) -> None:  # a card that loads gives a model that runs on its own input shape
        model, info = loaded
        h, w = info.meta["image_size"]
        z = model(torch.rand(2, info.meta["channels"], h, w))
        assert z.shape == (2, len(info.class_names)) and bool(torch.isfinite(z).all())

    return [Target("model-card-yaml", [CARD_SEED.encode()], d / "card.yaml", load_card, model_ok, text=True),
            Target("onnx", [(d / "m.onnx").read_bytes()], onnx_dir / "m.onnx",
                   lambda p: load_card(p.parent / "card.yaml"), model_ok)]


# ---------------------------------------------------------------------------------- campaign


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def campaign(target: Target, n: int, seed: int = 0, *, time_limit: float = TIME_LIMIT_S,
             keep_failures: int = 5) -> dict[str, Any]:
    """Run ``n`` seeded mutants of ``target``'s seeds; counts, exceptions by type, time, RSS."""
    rng = random.Random(f"{target.name}:{seed}")
    outcomes: Counter[str] = Counter()
    exc_types: Counter[str] = Counter()
    failures: list[dict[str, Any]] = []
    times = []
    rss0 = _rss_mb()
    old = signal.signal(signal.SIGALRM, _alarm)
    quiet = logging.getLogger("medxai")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # skipped-record warnings of open_dataset, one per input
    try:
        for i in range(n):
            src = target.seeds[i % len(target.seeds)]
            data = src if i < len(target.seeds) else target.mutate(src, rng)
            target.file.write_bytes(data)
            t0 = time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, time_limit)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res = target.call(target.file)
                target.check(res)
                outcomes["valid"] += 1
            except ALLOWED as exc:
                outcomes["refused"] += 1
                exc_types[type(exc).__name__] += 1
            except _Timeout:
                outcomes["hang"] += 1
                exc_types["timeout"] += 1
                if len(failures) < keep_failures:
                    failures.append({"i": i, "error": f"timeout after {time_limit} s", "bytes": data[:200].hex()})
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt):
                    raise
                outcomes["unexpected"] += 1
                exc_types[type(exc).__name__] += 1
                if len(failures) < keep_failures:
                    failures.append({"i": i, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}",
                                     "bytes": data[:200].hex()})
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            times.append(time.perf_counter() - t0)
    finally:
        signal.signal(signal.SIGALRM, old)
        quiet.setLevel(level)
    t = np.asarray(times)
    return {"target": target.name, "inputs": n, "valid": outcomes["valid"], "refused": outcomes["refused"],
            "unexpected": outcomes["unexpected"], "hangs": outcomes["hang"],
            "exceptions": dict(sorted(exc_types.items())), "max_s": float(t.max()), "mean_s": float(t.mean()),
            "total_s": float(t.sum()), "peak_rss_mb": _rss_mb(), "rss_growth_mb": _rss_mb() - rss0,
            "failures": failures}


def _cap_memory() -> tuple[int, int] | None:
    """Cap the address space at the current size + MEMORY_HEADROOM; returns the old limits."""
    try:
        with open("/proc/self/status") as fh:
            vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
        old = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (vm + MEMORY_HEADROOM, old[1]))
        return old
    except (OSError, ValueError, StopIteration):
        return None


def run(quick: bool = False, seed: int = 0) -> dict:
    from benchmarks._harness import row

    n = N_QUICK if quick else N_FULL
    work = Path(tempfile.mkdtemp(prefix="medxai-fuzz-"))
    rows = []
    old = _cap_memory()
    try:
        for target in targets(work):
            res = campaign(target, n, seed)
            ok = res["unexpected"] == 0 and res["hangs"] == 0
            rows.append(row(f"fuzz {target.name}", None, res["mean_s"], None, target=0, target_on="unexpected",
                            higher_is_better=False, note=f"{n} seeded mutants; only DataError/ConfigError/ModelError "
                            f"or a valid result allowed; {time_limit_note()}",
                            miss_reason="; ".join(f["error"] for f in res["failures"][:3]),
                            **{k: v for k, v in res.items() if k not in ("target", "failures")},
                            contract_held=ok, first_failures=res["failures"][:3]))
    finally:
        if old is not None:
            resource.setrlimit(resource.RLIMIT_AS, old)
        shutil.rmtree(work, ignore_errors=True)
    return {"kind": "fuzz", "rows": rows,
            "notes": f"Seeded byte mutations of valid files ({n} inputs per target, seed {seed}); 'unexpected' "
                     "counts exceptions other than DataError / ConfigError / ModelError and invalid results; 'hangs' "
                     "inputs "
                     f"that ran past {TIME_LIMIT_S} s; the address space was capped at the start size + "
                     f"{MEMORY_HEADROOM / 2**30:.0f} GiB (a blow-up would be a counted MemoryError); peak_rss_mb "
                     "is the process's maximum resident set after the target's campaign."}


def time_limit_note() -> str:
    return f"{TIME_LIMIT_S:.0f} s alarm per input"


if __name__ == "__main__":  # python -m benchmarks.bench_fuzz [N]: one campaign per target, printed
    import sys

    count = int(sys.argv[1]) if len(sys.argv) > 1 else N_QUICK
    w = Path(tempfile.mkdtemp(prefix="medxai-fuzz-"))
    for tg in targets(w):
        r = campaign(tg, count)
        print(json.dumps({k: v for k, v in r.items() if k != "failures"}), flush=True)
        for f in r["failures"]:
            print("   ", f["error"], flush=True)
    shutil.rmtree(w, ignore_errors=True)
