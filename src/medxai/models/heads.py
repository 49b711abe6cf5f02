"""Output heads that wrap a backbone: ``OrdinalHead`` (K ordered classes from one output)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medxai.errors import ConfigError, InputError


class OrdinalHead(nn.Module):
    """K ordered classes from a backbone with ONE output s (B, 1): returns (B, K) log-probabilities.

    ``cumulative``: proportional-odds cumulative link (McCullagh 1980),
    ``P(y <= k) = sigmoid(theta_k - s)``, thresholds ``theta_0 < ... < theta_{K-2}`` learned as
    ``theta_0 + cumsum(softplus(d))``; class probabilities are differences of the CDF.
    ``regression``: class logits ``-(s - k)^2 / 2`` (a unit-variance Gaussian on the grade,
    discretised); cross-entropy on them pulls E[k] towards the true grade.
    ``medxai_config`` is the backbone's; ``ordinal_head`` says how to rebuild the wrapper.
    """

    def __init__(self, backbone: nn.Module, mode: str, num_classes: int) -> None:
        super().__init__()
        if mode not in ("cumulative", "regression"):
            raise ConfigError(f"OrdinalHead mode must be 'cumulative' or 'regression', got {mode!r}")
        if num_classes < 2:
            raise ConfigError(f"OrdinalHead needs at least 2 classes, got {num_classes}")
        self.backbone = backbone
        self.mode = mode
        self.num_classes = int(num_classes)
        if mode == "cumulative":
            k = num_classes - 1
            self.theta0 = nn.Parameter(torch.tensor(-(k - 1) / 2.0))
            # softplus(0.5413) = 1: thresholds start one logit apart, centred on 0
            self.log_gaps = nn.Parameter(torch.full((max(k - 1, 0),), 0.5413))
        self.register_buffer("grades", torch.arange(num_classes, dtype=torch.float32), persistent=False)
        cfg = getattr(backbone, "medxai_config", None)
        if cfg is not None:
            self.medxai_config = dict(cfg)
        self.ordinal_head = {"mode": mode, "num_classes": self.num_classes}
        for attr in ("default_cam_layer", "medxai_arch"):  # keep what explainers look up, re-rooted
            v = getattr(backbone, attr, None)
            if isinstance(v, str):
                setattr(self, attr, f"backbone.{v}" if attr == "default_cam_layer" else v)

    def thresholds(self) -> torch.Tensor:
        gaps = F.softplus(self.log_gaps)
        return torch.cat([self.theta0.reshape(1), self.theta0 + torch.cumsum(gaps, 0)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.backbone(x)
        if s.ndim != 2 or s.shape[1] != 1:
            raise InputError(f"OrdinalHead needs a backbone with one output (B, 1), got {tuple(s.shape)}")
        s = s.float()
        if self.mode == "regression":
            return -0.5 * (s - self.grades) ** 2
        cdf = torch.sigmoid(self.thresholds() - s)  # (B, K-1) = P(y <= k)
        zeros, ones = torch.zeros_like(s), torch.ones_like(s)
        probs = torch.diff(torch.cat([zeros, cdf, ones], dim=1), dim=1)
        return probs.clamp_min(1e-12).log()
