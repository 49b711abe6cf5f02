"""Self-supervised (and supervised) pretraining of medxai ViTs, written for ``init_vit``.

Objectives:
- ``mae``: masked autoencoder (He et al., "Masked Autoencoders Are Scalable Vision Learners",
  CVPR 2022): 75% of the patches of each image masked at random, the encoder sees only the
  visible ones (+ CLS token), a narrow decoder (mask tokens, fixed 2-D sin-cos positions)
  reconstructs the masked patches; MSE on masked patches only, per-patch normalised targets
  (``norm_pix_loss=True``, the paper's default).
- ``dino``: self-distillation with no labels (Caron et al., "Emerging Properties in
  Self-Supervised Vision Transformers", ICCV 2021): student and EMA teacher with a projection
  head (MLP -> L2-normalised bottleneck -> weight-normalised prototypes), multi-crop (2 global,
  a few local crops), teacher centring and sharpening (optional temperature warm-up), cross-entropy
  across views (Eq. 3); collapse statistics per epoch (``collapse_stats``, the paper's Section 5.3).
- ``supervised``: cross-entropy classification on a labelled dataset (a linear head on the
  pooled features, dropped from the written file).

``pretrain(model, dataset, objective=...)`` trains ``model`` (a ``medxai.models`` ViT) in place and,
with ``out``, writes ``out/pretrained.safetensors`` (the backbone state dict in timm names, no
head: ``init_vit(model, objective, path)`` loads it) and ``out/pretrain.json``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medxai.errors import ConfigError, DataError
from medxai.models.vit import Block, VisionTransformer, resample_pos_embed

__all__ = ["OBJECTIVES", "DINOHead", "ImageFiles", "MAEDecoder", "PretrainResult", "backbone_state_dict",
           "collapse_stats", "dino_multicrop", "open_pretrain_data", "patchify", "pretrain", "random_masking",
           "save_pretrained"]

OBJECTIVES = ("mae", "dino", "supervised")
FORMAT = "medxai.pretrained/1"


@dataclass
class PretrainResult:
    """What ``pretrain`` did: the mean loss per epoch, per-epoch records (DINO adds ``teacher_entropy``,
    ``student_kl``, ``teacher_kl_uniform``, ``teacher_mi``, ``teacher_spread``, see ``collapse_stats``;
    supervised adds ``accuracy``), the settings used,
    the written files (None without ``out``), the wall time and the objective's state."""

    objective: str
    losses: list[float]
    history: list[dict[str, float]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    weights: Path | None = None
    record: Path | None = None
    time_s: float = 0.0
    trainer: Any = None  # the objective's state: DINO's teacher, head and centre (``teacher_probs``)


# --------------------------------------------------------------------------- data
class ImageFiles(Dataset):
    """A plain folder of images, no labels (listed recursively, sorted; ``medxai.data.load_image``):
    items ``{"image": (C, size, size) float32 in [0, 1], "path": str}``; resized on the shorter side
    and centre-cropped when ``size`` is given; ``channels`` None keeps the first image's."""

    def __init__(self, folder: str | Path, size: int | None = None, channels: int | None = None) -> None:
        from medxai.data.layouts import IMAGE_SUFFIXES

        self.root = Path(folder)
        if not self.root.is_dir():
            raise DataError(self.root, "not a folder of images")
        self.files = sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                            and not any(part.startswith(".") for part in p.relative_to(self.root).parts))
        if not self.files:
            raise DataError(self.root, "no image files found (png, jpg, tif, bmp, gif, dcm)")
        self.size, self.channels = size, channels
        self.class_names: list[str] = []

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from medxai.data import load_image
        from medxai.data.transforms import resize_centre_crop

        if self.channels is None:
            self.channels = int(load_image(self.files[0]).shape[-1])
        img = torch.from_numpy(load_image(self.files[index], self.channels).transpose(2, 0, 1).copy())
        if self.size is not None:
            img = resize_centre_crop(img, self.size).clamp(0, 1)
        return {"image": img, "path": str(self.files[index])}


def open_pretrain_data(spec: str | Path, split: str | None = None, size: int | None = None,
                       need_labels: bool = False) -> Dataset:
    """A medxai dataset (``open_dataset``: any layout, labels used by ``supervised``) or, when the
    folder has no known layout, its image files (``ImageFiles``, unlabelled)."""
    from medxai.data import open_dataset

    try:
        return open_dataset(spec, split=split, size=size)
    except DataError:
        if need_labels or not Path(spec).is_dir():
            raise
    return ImageFiles(spec, size=size)


def _collate(items: list[Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    images, labels = [], []
    for it in items:
        if isinstance(it, dict):
            images.append(torch.as_tensor(it["image"], dtype=torch.float32))
            labels.append(it.get("label"))
        else:
            images.append(torch.as_tensor(it[0], dtype=torch.float32))
            labels.append(it[1] if len(it) > 1 else None)
    y = None if any(lb is None for lb in labels) else torch.stack([torch.as_tensor(lb) for lb in labels])
    return torch.stack(images), y


# --------------------------------------------------------------------------- ViT pieces
def _check_vit(model: nn.Module) -> VisionTransformer:
    if not isinstance(model, VisionTransformer):
        raise ConfigError(f"pretrain needs a medxai ViT (medxai.models.create('vit-...')), got {type(model).__name__}")
    if model.cls_token is None:
        raise ConfigError("pretrain needs a ViT with a CLS token (class_token=True)")
    return model


def pooled(model: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """The ViT's pooled features (CLS token, or the mean of the patch tokens with ``fc_norm``), no head."""
    t = model.forward_features(x)
    t = t[:, model.num_prefix_tokens:].mean(dim=1) if model.global_pool == "avg" else t[:, 0]
    return model.fc_norm(t)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, p*p*C), patches in row-major grid order (MAE's layout)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)


def random_masking(batch: int, length: int, ratio: float, generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE's per-image random masking: exactly ``length - int(length * (1 - ratio))`` patches masked in
    every image. Returns (ids_keep (B, keep), mask (B, L) with 1 = masked, ids_restore (B, L))."""
    keep = int(length * (1 - ratio))
    if not 0 < keep < length:
        raise ConfigError(f"mask_ratio {ratio} keeps {keep} of {length} patches: need at least one kept and masked")
    noise = torch.rand(batch, length, generator=generator).to(device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(batch, length, device=device)
    mask[:, :keep] = 0
    return ids_shuffle[:, :keep], torch.gather(mask, 1, ids_restore), ids_restore


def _split_pos(model: VisionTransformer, grid: tuple[int, int]) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(prefix position embeddings or None, patch position embeddings (1, h*w, D)) for ``grid``."""
    pos, n_pre = model.pos_embed, 0 if model.no_embed_class else model.num_prefix_tokens
    if grid != model.patch_embed.grid_size:
        pos = resample_pos_embed(pos, grid, model.patch_embed.grid_size, n_pre)
    return (pos[:, :n_pre] if n_pre else None), pos[:, n_pre:]


def encode_visible(model: VisionTransformer, x: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
    """MAE encoder: the visible patches (+ position embeddings) after the prefix tokens, through the
    ViT's blocks and final norm: (B, prefix + keep, D)."""
    grid = model.grid_size(x.shape[-2:])
    tokens = model.patch_embed(model.normalize(x))
    pre_pos, patch_pos = _split_pos(model, grid)
    tokens = torch.gather(tokens + patch_pos, 1, ids_keep[..., None].expand(-1, -1, tokens.shape[-1]))
    prefix = torch.cat([t for t in (model.cls_token, model.reg_token) if t is not None], dim=1)
    if pre_pos is not None:
        prefix = prefix + pre_pos
    tokens = torch.cat([prefix.expand(x.shape[0], -1, -1), tokens], dim=1)
    return model.norm(model.blocks(model.norm_pre(model.pos_drop(tokens))))


def sincos_2d(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """Fixed 2-D sin-cos position embeddings (1, h*w, dim), as MAE's decoder (dim divisible by 4)."""
    gh, gw = grid
    yy, xx = torch.meshgrid(torch.arange(gh, dtype=torch.float32), torch.arange(gw, dtype=torch.float32),
                            indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim / 4))
    parts = [f(c.reshape(-1, 1) * omega) for c in (yy, xx) for f in (torch.sin, torch.cos)]
    return torch.cat(parts, dim=1)[None]


class MAEDecoder(nn.Module):
    """MAE's light decoder: encoder tokens -> ``dim`` wide, mask tokens put back in grid order, fixed
    sin-cos positions, ``depth`` transformer blocks, a linear layer to p*p*C pixels per patch."""

    def __init__(self, enc_dim: int, patch_pixels: int, num_prefix: int, dim: int = 64, depth: int = 2,
                 heads: int = 2) -> None:
        super().__init__()
        if dim % 4 or dim % heads:
            raise ConfigError(f"decoder_dim {dim} must be divisible by 4 and by decoder_heads {heads}")
        self.num_prefix, self.dim = num_prefix, dim
        self.embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pred = nn.Linear(dim, patch_pixels)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, tokens: torch.Tensor, ids_restore: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = self.embed(tokens)
        prefix, vis = x[:, :self.num_prefix], x[:, self.num_prefix:]
        n_mask = ids_restore.shape[1] - vis.shape[1]
        full = torch.cat([vis, self.mask_token.expand(x.shape[0], n_mask, -1)], dim=1)
        full = torch.gather(full, 1, ids_restore[..., None].expand(-1, -1, self.dim))
        full = full + sincos_2d(self.dim, grid).to(full)
        x = self.norm(self.blocks(torch.cat([prefix, full], dim=1)))
        return self.pred(x[:, self.num_prefix:])


class DINOHead(nn.Module):
    """DINO's projection head: ``nlayers`` MLP (GELU) -> L2-normalised ``bottleneck`` -> weight-normalised
    linear layer (norm fixed to 1, ``norm_last_layer=True``) onto ``out_dim`` prototypes."""

    def __init__(self, in_dim: int, out_dim: int = 64, hidden: int = 128, bottleneck: int = 32,
                 nlayers: int = 3) -> None:
        super().__init__()
        dims = [in_dim] + [hidden] * (nlayers - 1) + [bottleneck]
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            layers += [nn.Linear(dims[i], dims[i + 1])] + ([nn.GELU()] if i < len(dims) - 2 else [])
        self.mlp = nn.Sequential(*layers)
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.mlp(x), dim=-1)
        return F.linear(z, F.normalize(self.prototypes, dim=-1))


# --------------------------------------------------------------------------- multi-crop (torch ops)
def _resized_crop(img: torch.Tensor, out: int, scale: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
    """One random resized crop (area fraction in ``scale``, aspect ratio in [3/4, 4/3]) of (C, H, W)
    to (C, out, out), bilinear with antialias; the whole image when no crop fits in 10 draws."""
    _, h, w = img.shape
    u = torch.rand(10, 4, generator=gen).tolist()
    for a, r, fi, fj in u:
        area = h * w * (scale[0] + (scale[1] - scale[0]) * a)
        ratio = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * r)
        cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            i, j = int(fi * (h - ch + 1)), int(fj * (w - cw + 1))
            img = img[:, i:i + ch, j:j + cw]
            break
    return F.interpolate(img[None], size=(out, out), mode="bilinear", antialias=True, align_corners=False)[0]


def _view(img: torch.Tensor, out: int, scale: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
    """A DINO view: random resized crop, horizontal flip (p 0.5), brightness/contrast jitter 0.4 (p 0.8)."""
    v = _resized_crop(img, out, scale, gen)
    flip, jit, b, c = torch.rand(4, generator=gen).tolist()
    if flip < 0.5:
        v = v.flip(-1)
    if jit < 0.8:
        mean = v.mean()
        v = ((v - mean) * (0.6 + 0.8 * c) + mean) * (0.6 + 0.8 * b)
    return v.clamp(0, 1)


def dino_multicrop(x: torch.Tensor, global_size: int, local_size: int, n_local: int, gen: torch.Generator,
                   global_scale: tuple[float, float] = (0.4, 1.0),
                   local_scale: tuple[float, float] = (0.05, 0.4)) -> list[torch.Tensor]:
    """DINO's multi-crop of a batch (B, C, H, W): 2 global views (B, C, g, g), then ``n_local`` local
    views (B, C, l, l); every image gets its own crops."""
    views = [torch.stack([_view(im, global_size, global_scale, gen) for im in x.cpu()]) for _ in range(2)]
    views += [torch.stack([_view(im, local_size, local_scale, gen) for im in x.cpu()]) for _ in range(n_local)]
    return [v.to(x.device) for v in views]


# --------------------------------------------------------------------------- objectives
class _MAE:
    """Masked autoencoding (He et al. 2022); options: mask_ratio 0.75, norm_pix_loss True,
    decoder_dim (half the encoder's, multiple of 4), decoder_depth 2, decoder_heads (the encoder's)."""

    def __init__(self, model: VisionTransformer, gen: torch.Generator, mask_ratio: float = 0.75,
                 norm_pix_loss: bool = True, decoder_dim: int | None = None, decoder_depth: int = 2,
                 decoder_heads: int | None = None) -> None:
        self.model, self.gen, self.mask_ratio, self.norm_pix_loss = model, gen, float(mask_ratio), bool(norm_pix_loss)
        dim = decoder_dim or max(16, (model.embed_dim // 2) // 4 * 4)
        heads = decoder_heads or next(h for h in (model.blocks[0].attn.num_heads, 4, 2, 1) if dim % h == 0)
        p, c = model.patch_size, model.patch_embed.proj.in_channels
        self.decoder = MAEDecoder(model.embed_dim, p * p * c, model.num_prefix_tokens, dim, decoder_depth, heads)
        self.options = {"mask_ratio": self.mask_ratio, "norm_pix_loss": self.norm_pix_loss, "decoder_dim": dim,
                        "decoder_depth": decoder_depth, "decoder_heads": heads}

    def modules(self) -> list[nn.Module]:
        return [self.model, self.decoder]

    def loss(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        grid = self.model.grid_size(x.shape[-2:])
        ids_keep, mask, ids_restore = random_masking(x.shape[0], grid[0] * grid[1], self.mask_ratio, self.gen,
                                                     x.device)
        pred = self.decoder(encode_visible(self.model, x, ids_keep), ids_restore, grid)
        target = patchify(self.model.normalize(x), self.model.patch_size)
        if self.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        per_patch = ((pred - target) ** 2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum(), {}


class _DINO:
    """Self-distillation (Caron et al. 2021); options: out_dim 64 (K prototypes), hidden_dim 128,
    bottleneck_dim 32, n_local 4, local_size (3/7 of the image, a multiple of the patch), global_scale
    (0.4, 1), local_scale (0.05, 0.4), student_temp 0.1, teacher_temp 0.04 (reached linearly from
    warmup_teacher_temp over warmup_teacher_temp_epochs), center_momentum 0.9, momentum 0.996 (-> 1,
    cosine), freeze_last_layer 0 epochs, clip_grad 3.0."""

    def __init__(self, model: VisionTransformer, gen: torch.Generator, out_dim: int = 64, hidden_dim: int = 128,
                 bottleneck_dim: int = 32, n_local: int = 4, local_size: int | None = None,
                 global_scale: tuple[float, float] = (0.4, 1.0), local_scale: tuple[float, float] = (0.05, 0.4),
                 student_temp: float = 0.1, teacher_temp: float = 0.04, warmup_teacher_temp: float | None = None,
                 warmup_teacher_temp_epochs: int = 0, center_momentum: float = 0.9, momentum: float = 0.996,
                 freeze_last_layer: int = 0, clip_grad: float | None = 3.0) -> None:
        p, size = model.patch_size, model.patch_embed.img_size[0]
        if not 0 <= momentum <= 1 or not 0 <= center_momentum <= 1:
            raise ConfigError(f"momentum {momentum} and center_momentum {center_momentum} must lie in [0, 1]")
        if min(student_temp, teacher_temp, warmup_teacher_temp or teacher_temp) <= 0:
            raise ConfigError("DINO temperatures must be > 0")
        self.model, self.gen = model, gen
        self.head = DINOHead(model.embed_dim, out_dim, hidden_dim, bottleneck_dim)
        self.teacher = copy.deepcopy(nn.ModuleDict({"backbone": model, "head": self.head})).eval()
        self.teacher.requires_grad_(False)
        self.global_size, self.local_size = size, local_size or max(p, round(size * 96 / 224 / p) * p)
        self.center = torch.zeros(1, out_dim)
        self.clip_grad, self.total_steps, self.steps_per_epoch, self.step = clip_grad, 1, 1, 0
        self.options = {"out_dim": out_dim, "hidden_dim": hidden_dim, "bottleneck_dim": bottleneck_dim,
                        "n_local": n_local, "local_size": self.local_size, "global_size": size,
                        "global_scale": list(global_scale), "local_scale": list(local_scale),
                        "student_temp": student_temp, "teacher_temp": teacher_temp,
                        "warmup_teacher_temp": teacher_temp if warmup_teacher_temp is None else warmup_teacher_temp,
                        "warmup_teacher_temp_epochs": int(warmup_teacher_temp_epochs),
                        "center_momentum": center_momentum, "momentum": momentum,
                        "freeze_last_layer": int(freeze_last_layer), "clip_grad": clip_grad}

    def modules(self) -> list[nn.Module]:
        return [self.model, self.head]

    def teacher_temp(self) -> float:
        """The teacher temperature this epoch: linear from ``warmup_teacher_temp`` to ``teacher_temp``
        over ``warmup_teacher_temp_epochs`` epochs (the official code's per-epoch schedule), then constant."""
        o, epoch = self.options, self.step // max(1, self.steps_per_epoch)
        n = o["warmup_teacher_temp_epochs"]
        if epoch >= n:
            return float(o["teacher_temp"])
        frac = epoch / (n - 1) if n > 1 else 0.0  # np.linspace(start, end, n)[epoch], as the official code
        return float(o["warmup_teacher_temp"] + (o["teacher_temp"] - o["warmup_teacher_temp"]) * frac)

    def teacher_probs(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's centred, sharpened softmax (B, K) for images (B, C, H, W)."""
        with torch.no_grad():
            t = self.teacher["head"](pooled(self.teacher["backbone"], x))
            return F.softmax((t - self.center.to(t)) / self.teacher_temp(), dim=-1)

    def loss(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        """The mean over (teacher global view i, student view v != i) of H(P_t,i, P_s,v), DINO's Eq. 3
        with the centring and sharpening of Eq. 4 / Section 3.1; statistics of collapse (``collapse_stats``)."""
        o = self.options
        views = dino_multicrop(x, self.global_size, self.local_size, o["n_local"], self.gen,
                               tuple(o["global_scale"]), tuple(o["local_scale"]))
        with torch.no_grad():
            t_out = self.teacher["head"](pooled(self.teacher["backbone"], torch.cat(views[:2])))
            self.center = self.center.to(t_out)
            q = F.softmax((t_out - self.center) / self.teacher_temp(), dim=-1)
        s_out = [self.head(pooled(self.model, torch.cat(views[:2])))]
        s_out += [self.head(pooled(self.model, torch.cat(views[2:])))] if len(views) > 2 else []
        logp = F.log_softmax(torch.cat(s_out) / o["student_temp"], dim=-1).chunk(len(views))
        total, n_terms = x.new_zeros(()), 0
        for iq, qv in enumerate(q.chunk(2)):
            for v, lp in enumerate(logp):
                if v != iq:
                    total, n_terms = total + (-qv * lp).sum(dim=-1).mean(), n_terms + 1
        loss = total / n_terms
        with torch.no_grad():
            m = o["center_momentum"]
            self.center = self.center * m + t_out.mean(dim=0, keepdim=True) * (1 - m)
            stats = collapse_stats(q)
            stats["student_kl"] = float(loss) - stats["teacher_entropy"]
        return loss, stats

    def before_step(self, epoch: int) -> None:
        """DINO's ``cancel_gradients_last_layer``: no update of the prototypes in the first
        ``freeze_last_layer`` epochs (``epoch`` counted from 1)."""
        if epoch <= self.options["freeze_last_layer"]:
            self.head.prototypes.grad = None

    def after_step(self) -> None:
        """EMA update of the teacher, momentum cosine from ``momentum`` to 1 over all steps."""
        self.step += 1
        m0 = self.options["momentum"]
        m = 1 - (1 - m0) * (math.cos(math.pi * self.step / self.total_steps) + 1) / 2
        student = nn.ModuleDict({"backbone": self.model, "head": self.head})
        with torch.no_grad():
            for pt, ps in zip(self.teacher.parameters(), student.parameters(), strict=True):
                pt.mul_(m).add_(ps.detach(), alpha=1 - m)


def collapse_stats(q: torch.Tensor) -> dict[str, float]:
    """Collapse statistics of teacher probabilities ``q`` (N, K) (DINO Section 5.3 / Fig. 7):
    ``teacher_entropy`` mean_i h(q_i) (0: one-prototype collapse, log K: uniform collapse);
    ``teacher_kl_uniform`` KL(mean_i q_i || U) = log K - h(mean q) (log K: every image on the same
    prototype); ``teacher_mi`` h(mean q) - mean_i h(q_i), the information the prototype carries about
    the image (0 for both collapses, at most log K); ``teacher_spread`` mean_i TV(q_i, mean q). In nats."""
    def h(p: torch.Tensor) -> torch.Tensor:
        return -(p * p.clamp_min(1e-12).log()).sum(dim=-1)

    mean = q.mean(dim=0)
    ent, ent_mean = float(h(q).mean()), float(h(mean))
    return {"teacher_entropy": ent, "teacher_kl_uniform": math.log(q.shape[1]) - ent_mean,
            "teacher_mi": ent_mean - ent, "teacher_spread": float((q - mean).abs().sum(dim=-1).mean() / 2)}


class _Supervised:
    """Cross-entropy classification (BCE for multilabel float targets) with a linear head on the
    pooled features; the head is not written. Options: num_classes (default: the dataset's)."""

    def __init__(self, model: VisionTransformer, gen: torch.Generator, num_classes: int = 2) -> None:
        self.model = model
        self.head = nn.Linear(model.embed_dim, int(num_classes))
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.options = {"num_classes": int(num_classes)}

    def modules(self) -> list[nn.Module]:
        return [self.model, self.head]

    def loss(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        if y is None:
            raise ConfigError("supervised pretraining needs labelled data (items with a 'label')")
        logits = self.head(pooled(self.model, x))
        if y.is_floating_point() and y.ndim == 2:
            return F.binary_cross_entropy_with_logits(logits, y.to(logits)), {}
        acc = (logits.argmax(dim=1) == y).float().mean()
        return F.cross_entropy(logits, y.long()), {"accuracy": float(acc)}


def _num_classes(dataset: Dataset) -> int:
    names = list(getattr(dataset, "class_names", None) or [])
    if names:
        return len(names)
    raise ConfigError("supervised pretraining needs a dataset with class_names (or pass num_classes=)")


def _build(objective: str, model: VisionTransformer, dataset: Dataset, gen: torch.Generator,
           options: dict[str, Any]) -> Any:
    if objective == "mae":
        return _MAE(model, gen, **options)
    if objective == "dino":
        return _DINO(model, gen, **options)
    if "num_classes" not in options:
        options = {**options, "num_classes": _num_classes(dataset)}
    return _Supervised(model, gen, **options)


# --------------------------------------------------------------------------- loop
_DEFAULTS = {"mae": {"lr": 1e-3, "weight_decay": 0.05, "betas": (0.9, 0.95)},
             "dino": {"lr": 5e-4, "weight_decay": 0.04, "betas": (0.9, 0.999)},
             "supervised": {"lr": 1e-3, "weight_decay": 0.05, "betas": (0.9, 0.999)}}


def _check_options(objective: str, options: dict[str, Any]) -> None:
    import inspect

    cls = {"mae": _MAE, "dino": _DINO, "supervised": _Supervised}[objective]
    known = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "model", "gen")]
    bad = sorted(set(options) - set(known))
    if bad:
        raise ConfigError(f"unknown {objective} option(s) {bad}; known: {', '.join(known)}")


def _lr_at(step: int, total: int, warmup: int, lr: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total`` (per step)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _epochs(obj: Any, loader: DataLoader, opt: torch.optim.Optimizer, epochs: int, warmup_epochs: float,
            device: torch.device, bar: Callable[[], None]) -> Iterator[dict[str, float]]:
    """Run the epochs; yield each epoch's mean loss and statistics."""
    from medxai.train.loop import NonFiniteLossError

    total, warmup, step = epochs * len(loader), round(warmup_epochs * len(loader)), 0
    obj.total_steps, obj.steps_per_epoch = total, len(loader)
    params = [p for m in obj.modules() for p in m.parameters() if p.requires_grad]
    for epoch in range(1, epochs + 1):
        for m in obj.modules():
            m.train()
        sums: dict[str, float] = {}
        n_seen = 0
        for i, (x, y) in enumerate(loader, start=1):
            x, y = x.to(device), None if y is None else y.to(device)
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, total, warmup, g["initial_lr"])
            loss, stats = obj.loss(x, y)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(epoch, i, float(loss), None)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if hasattr(obj, "before_step"):
                obj.before_step(epoch)
            if getattr(obj, "clip_grad", None):
                nn.utils.clip_grad_norm_(params, obj.clip_grad)
            opt.step()
            if hasattr(obj, "after_step"):
                obj.after_step()
            step, b = step + 1, x.shape[0]
            n_seen += b
            for k, v in {"loss": float(loss.detach()), **stats}.items():
                sums[k] = sums.get(k, 0.0) + v * b
        bar()
        yield {"epoch": epoch, **{k: v / max(1, n_seen) for k, v in sums.items()}}


def pretrain(model: nn.Module, dataset: Dataset, objective: str = "mae", *, epochs: int = 10, batch_size: int = 32,
             lr: float | None = None, weight_decay: float | None = None, warmup_epochs: float = 0.0, seed: int = 0,
             device: str | torch.device = "cpu", out: str | Path | None = None, progress: bool = True,
             **objective_options: Any) -> PretrainResult:
    """Pretrain ``model`` (a medxai ViT, trained in place) on ``dataset`` (items with an ``image``
    (C, H, W) in [0, 1] at the model's ``img_size``; ``label`` for supervised) with ``objective``
    ``mae`` | ``dino`` | ``supervised`` (AdamW, per-step cosine lr after ``warmup_epochs``; lr and
    weight decay default per objective, see ``docs/pretrain.md``). With ``out``, writes
    ``out/pretrained.safetensors`` (for ``init_vit(model, objective, path)``) and ``out/pretrain.json``."""
    from medxai._util.seed import seed_everything

    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown pretraining objective {objective!r}; known: {', '.join(OBJECTIVES)}")
    vit = _check_vit(model)
    _check_options(objective, objective_options)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs must be an integer >= 1, got {epochs!r}")
    if len(dataset) < 1:
        raise ConfigError("the pretraining dataset is empty")
    seed_everything(seed)
    gen = torch.Generator().manual_seed(seed)
    dev = torch.device(device)
    obj = _build(objective, vit, dataset, gen, dict(objective_options))
    for m in [*obj.modules(), *([obj.teacher] if objective == "dino" else [])]:
        m.to(dev)
    d = _DEFAULTS[objective]
    lr = d["lr"] if lr is None else float(lr)
    wd = d["weight_decay"] if weight_decay is None else float(weight_decay)
    params = [p for m in obj.modules() for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": params, "initial_lr": lr}], lr=lr, weight_decay=wd, betas=d["betas"])
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=_collate, num_workers=0,
                        generator=torch.Generator().manual_seed(seed + 1))
    settings = {"objective": objective, "epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": wd,
                "betas": list(d["betas"]), "warmup_epochs": warmup_epochs, "seed": seed, "n_images": len(dataset),
                "options": obj.options, "model": getattr(model, "medxai_config", None)}
    t0, history = time.perf_counter(), []
    with _bar(progress, f"pretrain {objective}", epochs) as advance:
        for rec in _epochs(obj, loader, opt, epochs, warmup_epochs, dev, advance):
            history.append(rec)
    result = PretrainResult(objective, [r["loss"] for r in history], history, settings,
                            time_s=time.perf_counter() - t0, trainer=obj)
    if out is not None:
        save_pretrained(model, out, result)
    return result


class _bar:
    """A progress bar over epochs (``medxai._util.progress``); a no-op without ``progress``."""

    def __init__(self, show: bool, text: str, total: int) -> None:
        self.show, self.text, self.total = show, text, total
        self._ctx: Any = None

    def __enter__(self) -> Callable[[], None]:
        if not self.show:
            self._ctx = nullcontext()
            return lambda: None
        from medxai._util.progress import progress

        self._ctx = progress()
        bars = self._ctx.__enter__()
        task = bars.add_task(self.text, total=self.total)
        return lambda: bars.advance(task)

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


# --------------------------------------------------------------------------- writing
def backbone_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The ViT's state dict without the classifier head (timm names, as ``init_vit`` reads them)."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith("head.")}


def save_pretrained(model: nn.Module, out: str | Path, result: PretrainResult) -> PretrainResult:
    """Write ``out/pretrained.safetensors`` (backbone, metadata: format, objective, model config) and
    ``out/pretrain.json`` (objective, losses and records per epoch, settings); sets the paths on ``result``."""
    import json

    from medxai._util.io import atomic_write_json, save_safetensors

    out = Path(out)
    meta = {"format": FORMAT, "objective": result.objective,
            "model": json.dumps(getattr(model, "medxai_config", None))}
    result.weights = save_safetensors(out / "pretrained.safetensors", backbone_state_dict(model), meta)
    result.record = atomic_write_json(out / "pretrain.json", {
        "format": FORMAT, "objective": result.objective, "losses": result.losses, "history": result.history,
        "settings": result.settings, "time_s": result.time_s, "weights": result.weights.name})
    return result
