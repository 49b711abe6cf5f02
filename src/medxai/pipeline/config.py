"""The audit configuration: one YAML file (or none: the demo's embedded default).

Validated by pydantic with unknown keys refused, so a typo names the bad key. Budgets such as
``eps: [0.2/255, 0.4/255]`` are written as numbers or fractions ``a/b``
(``medxai.attacks.parse_eps``: parsed, never evaluated).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medxai._util.io import safe_yaml_load
from medxai.errors import ConfigError
from medxai.metrics.scoring import DEFAULT_METRICS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: Model and method names become folder names of the run directory (stages/train/NAME/...) and
#: keys of the report: letters, digits and ``_ . + -``, not starting with a dot, at most 64.
SAFE_NAME = re.compile(r"[A-Za-z0-9_+\-][A-Za-z0-9_.+\-]{0,63}")


def safe_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
        raise ValueError(f"{what} {value!r} must be 1-64 letters, digits or _ . + - (not starting with '.'): "
                         "it names folders of the run directory")
    return value


class SyntheticData(_Strict):
    study: str = "cxr-pneumonia"
    size: int = 48
    n_train: int = 600
    n_val: int = 150
    n_test: int = 200
    seed: int = 0
    shortcut: float | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class DataConfig(_Strict):
    synthetic: SyntheticData | None = None
    spec: str | dict[str, Any] | None = None  # open_dataset spec for real data
    size: int | None = None  # image size for real data (shorter side resize + centre crop)
    preprocess: Literal["none", "graham", "clahe"] = "none"  # fundus (Graham 2015) / X-ray contrast
    use: Literal["auto", "real", "synthetic"] = "auto"
    split: str = "test"  # the split evaluated, attacked, explained and scored
    positive_class: str | None = None  # binary: the class binary metrics call positive (default: the second)

    def use_synthetic(self, override: bool | None = None) -> bool:
        """Whether the audit runs on the synthetic stand-in (``--synthetic`` overrides ``use``)."""
        if override is not None:
            return override
        return self.use == "synthetic" or (self.use == "auto" and self.spec is None)

    @field_validator("split")
    @classmethod
    def _split(cls, v: str) -> str:
        from medxai.data.layouts import canonical_split

        try:
            return str(canonical_split(v))
        except ConfigError as exc:
            raise ValueError(str(exc)) from None


class ModelConfig(_Strict):
    name: str
    card: str | None = None  # an outside model's card (medxai.cards): audited as it is, not trained
    given: bool = False  # a module or card handed to medxai.audit() in Python: audited as it is
    arch: str = "small-cnn"
    pretrained: str | None = None  # a local checkpoint (torchvision / timm / MONAI / DINO / MAE layouts)
    init: Literal["random", "supervised", "dino", "mae"] | None = None  # ViT study: with pretrained = weights
    preset: str | None = None  # ViT study hyperparameters "<dataset>/<init>" (medxai.models.vit_presets)
    init_from: str | None = None  # another model of this audit (robust fine-tuning)
    freeze: str | int | dict[str, Any] | None = None  # a stage (exclusive), k stages, or {layers: N}
    options: dict[str, Any] = Field(default_factory=dict)  # extra create() kwargs
    train: dict[str, Any] = Field(default_factory=dict)  # medxai.train config keys

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return safe_name(v, "model name")

    @model_validator(mode="after")
    def _card_alone(self) -> ModelConfig:
        extra = sorted(self.model_fields_set - {"name", "card", "given"})
        if (self.card or self.given) and extra:
            raise ValueError(f"model {self.name!r} is an outside model, audited as it is, so {extra} do not apply")
        if self.card and self.given:
            raise ValueError(f"model {self.name!r}: card and given exclude each other")
        return self

    @property
    def outside(self) -> bool:
        """Whether the model is audited as it is (a card or a module given in Python), not trained."""
        return bool(self.card or self.given)


class AutoAttackConfig(_Strict):
    """Standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square) at one budget on the first ``n`` images."""

    enabled: bool = False
    eps: float | None = None  # pixel units; default: the largest budget of attack.eps
    n: int = 100
    steps: int = 100  # APGD / FAB iterations (the reference's 100)
    queries: int = 5000  # Square's query budget (the reference's 5000)

    @field_validator("eps", mode="before")
    @classmethod
    def _eps(cls, v: Any) -> float | None:
        from medxai.attacks.budget import parse_eps

        return None if v is None else parse_eps(v)


class RadiusConfig(_Strict):
    """Each image's minimum-norm adversarial perturbation (DeepFool or CW-L2) on the first ``n`` images."""

    enabled: bool = False
    method: Literal["deepfool", "cw"] = "deepfool"
    n: int = 100


class AttackConfig(_Strict):
    enabled: bool = True
    norm: Literal["linf", "l2"] = "linf"
    eps: list[float] = Field(default_factory=lambda: [0.0, 1 / 255, 2 / 255, 4 / 255])
    steps: int = 5
    n: int = 200
    autoattack: AutoAttackConfig = Field(default_factory=AutoAttackConfig)
    radius: RadiusConfig = Field(default_factory=RadiusConfig)

    @field_validator("eps", mode="before")
    @classmethod
    def _eps(cls, v: Any) -> list[float]:
        from medxai.attacks.budget import parse_eps

        if not isinstance(v, (list, tuple)):
            raise ValueError(f"eps must be a list of budgets, got {type(v).__name__}")
        return [parse_eps(e) for e in v]


class CorruptionConfig(_Strict):
    enabled: bool = True
    names: list[str] = Field(default_factory=lambda: ["gaussian_noise", "motion_blur", "brightness", "contrast"])
    severities: list[int] = Field(default_factory=lambda: [1, 2, 3])
    n: int = 200
    gallery: bool = True


class ExplainConfig(_Strict):
    methods: list[str] = Field(default_factory=lambda: ["saliency", "integrated_gradients", "gradcam"])
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)  # per-method kwargs
    output: Literal["logit", "softmax", "sigmoid"] = "logit"
    n_show: int = 8
    n_score: int = 100
    target: Literal["predicted", "label"] = "predicted"
    top_k: int | None = None  # multilabel: explain each image's k most probable findings

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        return [safe_name(m, "method") for m in v]


class ScoreConfig(_Strict):
    metrics: list[str] = Field(default_factory=lambda: list(DEFAULT_METRICS))  # as medxai score / store score
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)  # per-metric kwargs, e.g. {deletion: {steps: 32}}
    shortcut: bool = True
    sanity: bool = True
    sanity_methods: list[str] | None = None
    sanity_n: int = 8
    # cascading randomisation by block (layer2.1, blocks.3, ...) or by every module with parameters
    sanity_granularity: Literal["block", "layer"] = "block"
    n_boot: int = 1000
    compare: list[list[str]] = Field(default_factory=list)  # [[model_a, model_b], ...]

    @field_validator("sanity_methods")
    @classmethod
    def _methods(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else [safe_name(m, "method") for m in v]


class InterventionConfig(_Strict):
    """Shortcut reliance by intervention (``medxai.evaluate.intervention``): remove a region, compare
    with a random region of the same shape, optionally the generator's exact counterfactual."""

    enabled: bool = True
    region: Literal["auto", "shortcut_masks", "box"] = "auto"  # auto: the data's shortcut masks, else box
    box: list[float] | None = None  # [top, left, height, width] as fractions of the image (e.g. a marker corner)
    method: Literal["inpaint", "mean", "blur"] = "inpaint"
    n: int = 200  # images of the evaluation sample (those with a non-empty region are used)
    counterfactual: bool = True  # synthetic studies: the same images rendered without the marker
    transplant: bool = True  # paste the marker onto negative images without one

    @field_validator("box")
    @classmethod
    def _box(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (len(v) != 4 or not all(0 <= x <= 1 for x in v)):
            raise ValueError(f"box is [top, left, height, width] as fractions in [0, 1], got {v}")
        return v


class DiscoveryConfig(_Strict):
    """Unknown shortcuts: SpRAy (``medxai.metrics.spray``) over the explained images' maps."""

    enabled: bool = True
    method: str | None = None  # default: gradcam if explained (smooth maps cluster by strategy), else the first
    size: int = 16
    max_clusters: int = 8


class SubgroupConfig(_Strict):
    """Per-subgroup metrics for the data's ``groups`` (``medxai.evaluate.subgroups``)."""

    enabled: bool = True
    min_n: int = 10
    n_permutations: int = 1000


def _limits(pass_: float, warn: float) -> Any:
    return Field(default_factory=lambda: {"pass": pass_, "warn": warn})


class VerdictConfig(_Strict):
    """The scorecard's thresholds (``medxai.pipeline.verdict``): a value passes at ``pass`` or better,
    warns up to ``warn``, fails beyond; the report prints the thresholds it used."""

    discrimination: dict[str, float] = _limits(0.80, 0.70)  # AUC / balanced accuracy / kappa by task
    calibration_ece: dict[str, float] = _limits(0.05, 0.10)  # expected calibration error (15 bins)
    subgroup_gap: dict[str, float] = _limits(0.05, 0.10)  # best minus worst subgroup's headline metric
    attack_success: dict[str, float] = _limits(0.20, 0.50)  # success rate at reference_eps
    reference_eps: float | None = None  # default: the smallest budget above 0 in attack.eps
    corruption_drop: dict[str, float] = _limits(0.05, 0.10)  # mean drop of the headline metric
    shortcut_flip: dict[str, float] = _limits(0.05, 0.15)  # flip rate removing the region minus a random one
    localisation: dict[str, float] = _limits(0.50, 0.30)  # localisation_metric, mean over images with masks
    localisation_metric: str = "energy_pointing_game"
    faithfulness: dict[str, float] = _limits(0.05, 0.0)  # deletion AUC of random maps minus the method's
    # relative change of the map under imperceptible input noise (lower is better), when scored
    explanation_robustness: dict[str, float] = _limits(0.20, 0.50)
    explanation_robustness_metric: str = "max_sensitivity"
    sanity_spearman: float = 0.5  # mean Spearman |map| after cascading randomisation must fall below

    @field_validator("discrimination", "calibration_ece", "subgroup_gap", "attack_success", "corruption_drop",
                     "shortcut_flip", "localisation", "faithfulness", "explanation_robustness")
    @classmethod
    def _pass_warn(cls, v: dict[str, float]) -> dict[str, float]:
        if set(v) != {"pass", "warn"}:
            raise ValueError(f"thresholds need exactly the keys pass and warn, got {sorted(v)}")
        return {k: float(x) for k, x in v.items()}

    @field_validator("reference_eps", mode="before")
    @classmethod
    def _eps(cls, v: Any) -> Any:
        from medxai.attacks.budget import parse_eps

        return None if v is None else parse_eps(v)


class AuditConfig(_Strict):
    name: str = "audit"
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    models: list[ModelConfig] = Field(min_length=1)
    evaluation: dict[str, Any] = Field(default_factory=lambda: {"n_boot": 1000})
    attack: AttackConfig = Field(default_factory=AttackConfig)
    corruption: CorruptionConfig = Field(default_factory=CorruptionConfig)
    explain: ExplainConfig = Field(default_factory=ExplainConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    verdict: VerdictConfig = Field(default_factory=VerdictConfig)
    intervention: InterventionConfig = Field(default_factory=InterventionConfig)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    subgroups: SubgroupConfig = Field(default_factory=SubgroupConfig)

    @field_validator("models")
    @classmethod
    def _unique(cls, v: list[ModelConfig]) -> list[ModelConfig]:
        names = [m.name for m in v]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        known = set()
        for m in v:
            if m.init_from and m.init_from not in known:
                raise ValueError(f"model {m.name!r}: init_from {m.init_from!r} must name an earlier trained model")
            if not m.outside:
                known.add(m.name)
        return v

    def models_trained(self) -> bool:
        """Whether any model of the audit is trained (else only the audited split is read)."""
        return any(not m.outside for m in self.models)


def check_names(cfg: AuditConfig) -> None:
    """Every method, metric, corruption and architecture the config names exists: found in seconds,
    before any stage runs (a typo must not surface after the models trained)."""
    from medxai.corruptions import REGISTRY as CORRUPTIONS
    from medxai.explain import REGISTRY as METHODS
    from medxai.metrics import metric_infos
    from medxai.models import list_models

    def named(what: str, fn: Any) -> None:
        try:
            fn()
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"{what}: {' '.join(str(exc).split())}") from None

    for m in [*cfg.explain.methods, *(cfg.score.sanity_methods or [])]:  # options may name the registry method
        registry_name = cfg.explain.options.get(m, {}).get("method", m)
        named(f"explain.methods: {m!r}", lambda r=registry_name: METHODS.get(r))
    if cfg.discovery.method:
        named(f"discovery.method: {cfg.discovery.method!r}", lambda: METHODS.get(cfg.discovery.method))
    named("score.metrics", lambda: metric_infos(cfg.score.metrics))
    if cfg.corruption.enabled:
        for c in cfg.corruption.names:
            named(f"corruption.names: {c!r}", lambda c=c: CORRUPTIONS.get(c))
    known = set(list_models())
    for mc in cfg.models:
        if not mc.outside and mc.arch not in known and not mc.arch.startswith(("combined:", "timm:", "torchvision:")):
            raise ConfigError(f"models[{mc.name}].arch: unknown architecture {mc.arch!r} (known: {sorted(known)})")


def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")

    def index(lst: list, k: str, upto: int) -> int:
        try:
            i = int(k)
            lst[i]
        except (ValueError, IndexError):
            raise ConfigError(f"--set {dotted}: {'.'.join(keys[:upto])} is a list of {len(lst)}; "
                              f"{k!r} is not an index of it") from None
        return i

    cur: Any = d
    for i, k in enumerate(keys[:-1]):
        if isinstance(cur, list):
            cur = cur[index(cur, k, i)]
        else:
            cur = cur.setdefault(k, {})
        if not isinstance(cur, (dict, list)):
            raise ConfigError(f"--set {dotted}: {'.'.join(keys[: i + 1])} is not a mapping")
    if isinstance(cur, list):
        cur[index(cur, keys[-1], len(keys) - 1)] = value
    else:
        cur[keys[-1]] = value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` overrides (value parsed as YAML scalars/lists)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, val = item.split("=", 1)
        try:
            value = safe_yaml_load(val)
        except yaml.YAMLError as exc:
            why = " ".join(str(exc).split())
            raise ConfigError(f"--set {key.strip()}: cannot parse value {val!r}: {why}") from None
        _set_dotted(raw, key.strip(), value)
    return raw


def read_config_dict(path: str | Path) -> dict:
    """The mapping of an audit config YAML file (not yet validated)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = safe_yaml_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return raw


def load_config(source: str | Path | dict, overrides: list[str] | None = None) -> AuditConfig:
    """Read and validate an audit config (YAML path or dict); errors name the file and key."""
    where = "config" if isinstance(source, dict) else str(source)
    raw = source if isinstance(source, dict) else read_config_dict(source)
    raw = apply_overrides(dict(raw), overrides or [])
    try:
        return AuditConfig.model_validate(raw)
    except ValidationError as exc:
        errs = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{where}: {errs}") from None
