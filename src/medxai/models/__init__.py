"""Model zoo: every model takes [0, 1] images (B, C, H, W), normalises them in its first layer and
returns logits (B, num_classes).

``create(name, num_classes, in_chans=3, *, pretrained=None, normalize="imagenet", **kw)`` over
``REGISTRY`` (``list_models()``): ResNet-18/34/50, DenseNet-121, EfficientNet-B0..B7 (MONAI 2-D),
MobileNetV2, Inception-v3, ViTs (timm layout; ``vit.capture_attention``), tiny ``small-cnn`` and
``resnet8``, ``combined:A+B+...``, ``timm:NAME`` / ``torchvision:NAME`` when installed. Volumes
(B, C, D, H, W): ``create(..., spatial_dims=3)`` for ``VOLUME_MODELS`` (MONAI 3-D networks, a
``Normalize3d`` first), ``small-cnn3d``, and 2.5-D ``create(..., slices=D)`` (``SliceStack``).
``load_weights`` reads local torchvision / timm / MONAI / DINO / MAE checkpoints safely;
``freeze`` / ``unfreeze`` handle fine-tuning (BatchNorm statistics included).
"""

from __future__ import annotations

from medxai.models import cnn, inception, mobilenet, vit  # noqa: F401  (fill the registry)
from medxai.models._common import IMAGENET_MEAN, IMAGENET_STD, Normalize, hooks_unavailable
from medxai.models.cnn import VOLUME_MODELS, Normalize3d, SliceStack
from medxai.models.combined import Combined
from medxai.models.factory import create, list_models
from medxai.models.freeze import freeze, parameterised_layers, unfreeze
from medxai.models.heads import OrdinalHead
from medxai.models.inception import InceptionV3
from medxai.models.mobilenet import MobileNetV2
from medxai.models.registry import REGISTRY
from medxai.models.vit import VisionTransformer, capture_attention, resample_pos_embed
from medxai.models.weights import LoadReport, adapt_input_conv, load_weights, read_state_dict

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "REGISTRY",
    "VOLUME_MODELS",
    "Combined",
    "InceptionV3",
    "LoadReport",
    "MobileNetV2",
    "Normalize",
    "Normalize3d",
    "OrdinalHead",
    "SliceStack",
    "VisionTransformer",
    "adapt_input_conv",
    "capture_attention",
    "create",
    "freeze",
    "hooks_unavailable",
    "list_models",
    "load_weights",
    "parameterised_layers",
    "read_state_dict",
    "resample_pos_embed",
    "unfreeze",
]

