"""Export one small CNN in every format medxai audits, with a card for each, and a dataset to audit.

    python examples/own-model/export.py                 # writes examples/own-model/out/
    medxai audit --config examples/own-model.yaml       # audits the files as they are (no training)

The CNN is trained here for a few epochs on medxai's synthetic chest X-ray study (written in the
folder layout, as real data would be). It is then saved as TorchScript, a torch.export program,
ONNX, and a safetensors state dict (of a medxai zoo architecture and of MONAI's DenseNet-121),
each with its card. Run from the repository root.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file
from torch import nn

CLASSES = ["NORMAL", "PNEUMONIA"]


class SmallCNN(nn.Module):
    """A plain classifier as a user would write it: normalised input in, two logits out."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train(model: nn.Module, data: Path, epochs: int) -> nn.Module:
    """A few epochs of plain cross-entropy on the train split; the model expects (x - 0.5) / 0.25."""
    from medxai.data import open_dataset

    ds = open_dataset(data, split="train")
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    y = torch.tensor([int(ds[i]["label"]) for i in range(len(ds))])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(model((x[idx] - 0.5) / 0.25), y[idx]).backward()
            opt.step()
    return model.eval()


def card(path: Path, fmt: str, size: int, **extra) -> dict:
    return {"path": path.name, "format": fmt, "task": "binary", "classes": CLASSES, "positive_class": "PNEUMONIA",
            "input": {"size": [size, size], "channels": 1, "normalize": {"mean": [0.5], "std": [0.25]}}, **extra}


def export_all(model: nn.Module, out: Path, size: int) -> dict[str, Path]:
    """Save ``model`` in each format with its card; returns {name: card path}."""
    x = torch.rand(2, 1, size, size)
    torch.jit.trace(model, x).save(str(out / "model.ts"))
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(out / "model.pt2"))
    torch.onnx.export(model, (x,), str(out / "model.onnx"), dynamo=False, input_names=["image"],
                      output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    from monai.networks.nets import DenseNet121

    # untrained: a model at chance, which the audit must not mistake for a good one
    densenet = DenseNet121(spatial_dims=2, in_channels=1, out_channels=2).eval()
    save_file({k: v.contiguous() for k, v in densenet.state_dict().items()}, str(out / "densenet.safetensors"))
    cards = {
        "torchscript": card(out / "model.ts", "torchscript", size),
        "exported": card(out / "model.pt2", "exported", size),
        "onnx": card(out / "model.onnx", "onnx", size),
        "densenet": card(out / "densenet.safetensors", "state_dict", size, arch="monai:DenseNet121"),
    }
    paths = {}
    for name, c in cards.items():
        paths[name] = out / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(c, sort_keys=False))
    return paths


def main(argv: list[str] | None = None) -> dict[str, Path]:
    from medxai.data import write_synthetic

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("examples/own-model/out"))
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--n", type=int, default=400, help="images in the synthetic study (70% train, 30% test)")
    ap.add_argument("--epochs", type=int, default=8)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "data"
    n_train = int(0.7 * args.n)
    write_synthetic("cxr-pneumonia", data, {"train": n_train, "test": args.n - n_train}, size=args.size, seed=0,
                    overwrite=True)
    torch.manual_seed(0)
    paths = export_all(train(SmallCNN(), data, args.epochs), args.out, args.size)
    models = " ".join(f"--model {p}" for p in paths.values())
    print(f"wrote {', '.join(str(p) for p in paths.values())} and the dataset {data}\n"
          f"audit them: medxai audit {models} --data {data} --out runs/own-model\n"
          f"        or: medxai audit --config examples/own-model.yaml")
    return paths


if __name__ == "__main__":
    main()
