"""``medxai audit``: data -> models -> evaluation -> attacks -> corruptions -> explanations ->
scores, sanity checks, shortcut analysis -> report, each a cached stage of the run directory.

A stage's key hashes its own config and the keys of the stages it reads, so a rerun reuses
everything and changing one explainer recomputes only that explainer's maps and scores.

:func:`run_audit` is the list of steps; each step reads and extends one :class:`_Audit` (the
config, the run directory's stage runner, the data and the stage results so far). The work a
stage does when it is not cached is a module-level ``*_stage`` function bound with
:func:`functools.partial`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from medxai._util.flops import WorkMeter
from medxai._util.io import atomic_write_json
from medxai._util.seed import seed_everything
from medxai.errors import MedxaiError
from medxai.pipeline.cache import StageResult, StageRunner, stage_key
from medxai.pipeline.config import AuditConfig, ModelConfig
from medxai.pipeline.data import EvalSample, build_datasets, eval_sample

if TYPE_CHECKING:
    from medxai.cards import ModelCard

__all__ = ["AuditResult", "run_audit"]


@dataclass
class AuditResult:
    out: Path
    report_html: Path
    report: dict
    findings: list[dict]
    stages: list[dict] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class _Audit:
    """One audit's state: its inputs, and every stage's result once that step has run."""

    cfg: AuditConfig
    out: Path
    runner: StageRunner
    datasets: dict[str, Any]
    data_desc: dict[str, Any]
    data_parts: dict[str, Any]  # what the data stage's key hashes; every stage that reads data hashes data_key
    sample: EvalSample  # the fixed test images every robustness / explanation stage draws from
    x_sample: EvalSample  # its first n_score / n_show images: explained, scored, shown in the report
    data_st: StageResult | None = None
    model_stages: dict[str, StageResult] = field(default_factory=dict)
    evals: dict[str, dict] = field(default_factory=dict)
    attacks: dict[str, dict] = field(default_factory=dict)
    corruptions: dict[str, dict] = field(default_factory=dict)
    gallery: StageResult | None = None
    explained: dict[tuple[str, str], StageResult] = field(default_factory=dict)
    scores: dict[tuple[str, str], StageResult] = field(default_factory=dict)
    sanity: list[dict] = field(default_factory=list)
    interventions: dict[str, dict] = field(default_factory=dict)
    discovery: dict[str, StageResult] = field(default_factory=dict)
    cards: dict[str, ModelCard] = field(default_factory=dict)  # the outside models, audited as they are
    unavailable: dict[tuple[str, str], str] = field(default_factory=dict)  # (model, method) -> why not
    skipped: dict[str, str] = field(default_factory=dict)  # stage -> why it does not run (volumes)
    loaded: dict[str, torch.nn.Module] = field(default_factory=dict)
    meter: WorkMeter = field(default_factory=WorkMeter)  # counts every loaded model's work (report["work"])
    clean: dict[str, torch.Tensor] = field(default_factory=dict)  # model -> (N, K) clean logits of ``sample``
    eval_stages: dict[str, StageResult] = field(default_factory=dict)

    def model(self, name: str) -> torch.nn.Module:
        """Model ``name`` in eval mode, loaded once: a trained run's best checkpoint, or a card's file
        with its outputs in the data's class order; its work counted by ``meter`` from then on."""
        model = self._load(name)
        if name not in self.meter:
            self.meter.attach(name, model, tuple(self.sample.x.shape[1:]))
        return model

    def _load(self, name: str) -> torch.nn.Module:
        if name not in self.loaded:
            if name in self.cards:
                from medxai.cards import load_card

                self.loaded[name] = load_card(self.cards[name], class_order=self.class_names)[0]
            else:
                from medxai.runs import load_run

                self.loaded[name] = _fast_layout(load_run(self.model_stages[name].dir / "run")[0].eval())
        return self.loaded[name]

    @property
    def data_key(self) -> str:
        return stage_key(self.data_parts)

    @property
    def task(self) -> str:
        return self.data_desc["task"]

    @property
    def class_names(self) -> list[str]:
        return self.data_desc["class_names"]


def _fast_layout(model: torch.nn.Module) -> torch.nn.Module:
    """A trained model on the CPU with 2-D convolutions, its weights laid out channels-last (NHWC): oneDNN
    runs those convolutions 1.2-2.3x faster than NCHW (measured on 2 cores: small-cnn 64 px, resnet8 48
    and 96 px, resnet18 128 px; the same values up to float rounding, about 1e-8 on logits). The audit's
    own loaded copy is converted; cards' models (TorchScript, ONNX, ...) and GPU models stay as they are."""
    p = next(model.parameters(), None)
    if p is not None and p.device.type == "cpu" and any(isinstance(m, torch.nn.Conv2d) for m in model.modules()):
        model = model.to(memory_format=torch.channels_last)
    return model


def run_audit(cfg: AuditConfig, out: str | Path, *, synthetic: bool | None = None, force: set[str] | None = None,
              log: Callable[[str], None] | None = None, progress: Any = None,
              given: dict[str, Any] | None = None, dataset: Any = None) -> AuditResult:
    """Run (or resume) the whole audit into ``out``; returns the report and findings.

    ``given``: the models of ``cfg`` marked ``given`` (``nn.Module`` objects taking [0, 1] images and
    returning logits in the data's class order, or ``ModelCard`` objects); ``dataset``: a dataset object
    audited as the split ``cfg.data.split`` instead of ``cfg.data`` (``medxai.audit`` passes both).
    """
    t0 = time.perf_counter()
    audit = _start(cfg, Path(out), synthetic=synthetic, force=force, log=log, given=given or {}, dataset=dataset)
    try:
        _data(audit)
        _models(audit)
        _clean(audit)
        _robustness(audit)
        _explain(audit)
        _sanity(audit)
        _shortcuts(audit)
        report, html = _report(audit)
    finally:  # the counting hooks come off every model (given modules are the caller's)
        audit.meter.close()
    return AuditResult(audit.out, html, report, report["findings"], audit.runner.events, time.perf_counter() - t0)


# -- steps, in the order run_audit runs them ---------------------------------------------------

def _start(cfg: AuditConfig, out: Path, *, synthetic: bool | None, force: set[str] | None,
           log: Callable[[str], None] | None, given: dict[str, Any], dataset: Any) -> _Audit:
    """Read the cards, build the datasets (checked against the cards by class name, size and
    channels before any model runs), write config.json and draw the fixed evaluation sample."""
    from medxai.pipeline.config import check_names
    from medxai.pipeline.outside import given_data, read_cards, split_given

    check_names(cfg)
    cards, modules = split_given(cfg, given)
    cards = {**read_cards(cfg), **cards}
    if dataset is not None:
        datasets, data_desc, data_parts = given_data(cfg, cards, dataset)
    else:
        datasets, data_desc, fit = _open_data(cfg, cards, synthetic)
        data_parts = {"data": cfg.data.model_dump(mode="json"), "synthetic": synthetic, **({"fit": fit} if fit else {})}
    out.mkdir(parents=True, exist_ok=True)
    meter = WorkMeter()
    runner = StageRunner(out, force=force, log=log or (lambda m: None), meter=meter)
    seed_everything(cfg.seed)
    atomic_write_json(out / "config.json", cfg.model_dump(mode="json"))
    n_eval = max(cfg.attack.n if cfg.attack.enabled else 0, cfg.corruption.n if cfg.corruption.enabled else 0,
                 cfg.explain.n_score, cfg.explain.n_show)
    sample = eval_sample(datasets[cfg.data.split], n_eval, seed=cfg.seed)
    data_desc["sample"] = sample.extra["how"]
    data_parts["sampling"] = "stratified-prefix/1"  # which images the sample holds (medxai.data.sampling)
    skipped = _check_volumes(cfg, cards, sample)
    _check_channels(cards, sample)
    x_sample = sample.subset(max(cfg.explain.n_score, cfg.explain.n_show))
    return _Audit(cfg, out, runner, datasets, data_desc, data_parts, sample, x_sample, cards=cards,
                  loaded={n: m.eval() for n, m in modules.items()}, skipped=skipped, meter=meter)


def _check_volumes(cfg: AuditConfig, cards: dict[str, ModelCard], sample: EvalSample) -> dict[str, str]:
    """On volumes: every trained architecture builds in 3-D (before any stage runs); the stages that
    do not run on volumes, with their reasons (``medxai.pipeline.volumes.stage_skips``)."""
    from medxai.errors import ConfigError, ModelError
    from medxai.models.cnn import VOLUME_MODELS
    from medxai.pipeline.volumes import stage_skips

    if not sample.volumes:
        return {}
    if cards:
        raise ModelError(f"model cards describe (C, H, W) inputs; the data are volumes {tuple(sample.x.shape[1:])} "
                         f"(cards {sorted(cards)}): audit volumes with trained or given models")
    for mc in cfg.models:
        if not mc.outside and mc.arch not in VOLUME_MODELS:
            raise ConfigError(f"models[{mc.name}].arch: {mc.arch!r} does not build for volumes (3-D: "
                              f"{', '.join(VOLUME_MODELS)})")
    return stage_skips(cfg)


def _open_data(cfg: AuditConfig, cards: dict[str, ModelCard],
               synthetic: bool | None) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The datasets (only the audited split when no model is trained), fitted to the cards: their
    size and channels, and classes in the order that puts a binary card's positive class second."""
    from medxai.cards import data_class_order
    from medxai.errors import ModelError
    from medxai.pipeline.outside import data_options, describe_resize

    splits = ("train", "val", cfg.data.split) if cfg.models_trained() else (cfg.data.split,)
    splits = tuple(dict.fromkeys(splits))
    opts = data_options(cfg, cards, synthetic)
    datasets, desc = build_datasets(cfg.data, synthetic=synthetic, splits=splits, **opts)
    order = _positive_order(cfg, desc, data_class_order(cards, desc["class_names"], desc["task"]))
    if order is not None:
        if desc["source"] == "synthetic":
            raise ModelError(f"the synthetic study's positive class is {desc['class_names'][1]!r}, the cards' "
                             f"is {order[1]!r}")
        datasets, desc = build_datasets(cfg.data, synthetic=synthetic, splits=splits, classes=order, **opts)
    desc["description"] += describe_resize(opts) if desc["source"] == "real" else ""
    if desc["task"] == "binary":
        desc["positive_class"] = desc["class_names"][1]
    return datasets, desc, {**opts, "classes": order} if cards else {}


def _positive_order(cfg: AuditConfig, desc: dict[str, Any], order: list[str] | None) -> list[str] | None:
    """The class order that puts ``data.positive_class`` second (binary), agreeing with the cards' order."""
    from medxai.errors import ConfigError

    pos, names = cfg.data.positive_class, list(desc["class_names"])
    if pos is None:
        return order
    if desc["task"] != "binary":
        raise ConfigError(f"data.positive_class is for binary tasks; the data's task is {desc['task']}")
    if pos not in names:
        raise ConfigError(f"data.positive_class {pos!r} is not one of the data's classes {names}")
    want = [n for n in names if n != pos] + [pos]
    if order is not None and order != want:
        raise ConfigError(f"data.positive_class {pos!r} disagrees with the cards' positive class {order[1]!r}")
    return None if want == names else want


def _check_channels(cards: dict[str, ModelCard], sample: EvalSample) -> None:
    from medxai.errors import ModelError

    for name, card in cards.items():
        if sample.x.shape[1] != card.input.channels or list(sample.x.shape[-2:]) != card.input.size:
            raise ModelError(f"model {name!r}: the card expects ({card.input.channels}, {card.input.size[0]}, "
                             f"{card.input.size[1]}) images, the data gives {tuple(sample.x.shape[1:])}")


def _data(a: _Audit) -> None:
    a.data_st = a.runner.run("data", a.data_parts, partial(_data_stage, a))


def _models(a: _Audit) -> None:
    """Train each model (in config order: ``init_from`` names an earlier one) or load its card,
    then evaluate it."""
    from medxai.cards import file_sha256

    for mc in a.cfg.models:
        if mc.name in a.cards:
            card = a.cards[mc.name]
            parts = {"card": card.model_dump(mode="json"), "sha256": file_sha256(card.path),
                     "classes": a.class_names}
            a.model_stages[mc.name] = a.runner.run(f"model/{mc.name}", parts, partial(_card_stage, a, mc.name))
        elif mc.given:  # a module handed over in Python: keyed by its weights
            from medxai.pipeline.outside import module_fingerprint

            parts = {"module": module_fingerprint(a.loaded[mc.name]), "classes": a.class_names}
            a.model_stages[mc.name] = a.runner.run(f"model/{mc.name}", parts, partial(_module_stage, a, mc.name))
        else:
            parts = {"data": a.data_key, "model": mc.model_dump(mode="json"), "seed": a.cfg.seed,
                     "init_from": a.model_stages[mc.init_from].key if mc.init_from else None}
            a.model_stages[mc.name] = a.runner.run(f"train/{mc.name}", parts, partial(_train_stage, a, mc))
        _evaluate(a, mc.name)


def _evaluate(a: _Audit, name: str) -> None:
    parts = {"train": a.model_stages[name].key, "eval": a.cfg.evaluation, "subgroups": a.cfg.subgroups.model_dump()}
    st = a.eval_stages[name] = a.runner.run(f"evaluate/{name}", parts, partial(_eval_stage, a, name))
    a.evals[name] = dict(st.result)
    if st.result.get("subgroups_png"):  # the report embeds it from the stage folder
        a.evals[name]["subgroups_png"] = str(st.dir / st.result["subgroups_png"])


def _clean(a: _Audit) -> None:
    """Per model: the clean logits of the evaluation sample, shared by the stages that need clean
    predictions (explain: targets and probabilities; sanity; discovery): the evaluation stage's rows
    of the sample's images (no forward), or one forward per image where that stage kept no logits."""
    from safetensors.torch import load_file

    for name, st in a.model_stages.items():
        ev = a.eval_stages[name]
        parts = {"train": st.key, "data": a.data_key, "n": len(a.sample), "evaluate": ev.key}
        res = a.runner.run(f"clean/{name}", parts, _on_model(a, name, _clean_stage, a.sample, ev.dir))
        a.clean[name] = load_file(str(res.dir / "logits.safetensors"))["logits"]


def _robustness(a: _Audit) -> None:
    """Per model: the attack sweep and the corruption table; then the corruption gallery."""
    cfg = a.cfg
    for name, st in a.model_stages.items():
        if cfg.attack.enabled:
            parts = {"train": st.key, "attack": cfg.attack.model_dump(), "data": a.data_key}
            a.attacks[name] = dict(a.runner.run(f"attack/{name}", parts, partial(_attack_stage, a, name)).result)
            for key, stage in (("autoattack", _autoattack_stage), ("radius", _radius_stage)):
                sub = getattr(cfg.attack, key)
                if sub.enabled and key in a.skipped:  # volumes: said in the report, not run
                    a.attacks[name][key] = {"reason": a.skipped[key]}
                elif sub.enabled:
                    p = {"train": st.key, "data": a.data_key, "norm": cfg.attack.norm, "eps": cfg.attack.eps,
                         key: sub.model_dump()}
                    a.attacks[name][key] = a.runner.run(f"{key}/{name}", p, partial(stage, a, name)).result
        if cfg.corruption.enabled and "corruption" not in a.skipped:
            parts = {"train": st.key, "data": a.data_key, "corruption": cfg.corruption.model_dump()}
            try:
                a.corruptions[name] = a.runner.run(f"corrupt/{name}", parts, partial(_corruption_stage, a, name)).result
            except (MedxaiError, ValueError, RuntimeError) as exc:  # volumes: a refusal is stated, not a crash
                if not a.sample.volumes:
                    raise
                a.skipped["corruption"] = f"the corruption table failed on volumes: {' '.join(str(exc).split())}"
    if cfg.corruption.enabled and cfg.corruption.gallery and "gallery" not in a.skipped:
        parts = {"data": a.data_key, "c": cfg.corruption.model_dump()}
        a.gallery = a.runner.run("corrupt/gallery", parts, partial(_gallery_stage, a))


def _explain(a: _Audit) -> None:
    """Per model and method: the maps, then their scores (a score stage hashes its maps' key)."""
    from medxai.pipeline.explanations import RandomDeletion, explain_stage, score_stage

    cfg, task, x_sample = a.cfg, a.task, a.x_sample
    for name, st in a.model_stages.items():
        baseline = RandomDeletion()  # one random-map deletion baseline per model, shared by its methods
        for method in cfg.explain.methods:
            if _unavailable(a, name, method):
                continue
            opts = cfg.explain.options.get(method, {})
            parts = {"train": st.key, "data": a.data_key, "method": method, "options": opts,
                     "output": cfg.explain.output, "target": cfg.explain.target, "n": len(x_sample)}
            ex = _guarded(a, (name, method), f"explain/{name}/{method}", parts,
                          _on_model(a, name, explain_stage, x_sample, method, opts, cfg.explain, task,
                                    logits=a.clean[name][:len(x_sample)]))
            if ex is None:
                continue
            a.explained[(name, method)] = ex
            a.scores[(name, method)] = a.runner.run(
                f"score/{name}/{method}", {"explain": ex.key, "score": cfg.score.model_dump()},
                _on_model(a, name, score_stage, x_sample, ex, cfg.score, task,
                          method=(method, opts, cfg.explain.output), baseline=baseline))


def _sanity(a: _Audit) -> None:
    """The model-randomisation check, per model, for ``score.sanity_methods`` (default: the first method)."""
    from medxai.pipeline.explanations import sanity_stage

    cfg = a.cfg
    if not cfg.score.sanity:
        return
    for name, st in a.model_stages.items():
        for method in cfg.score.sanity_methods or cfg.explain.methods[:1]:
            if _unavailable(a, name, method):
                continue
            opts = cfg.explain.options.get(method, {})
            parts = {"train": st.key, "data": a.data_key, "method": method, "opts": opts,
                     "n": cfg.score.sanity_n, "output": cfg.explain.output,
                     "granularity": cfg.score.sanity_granularity}
            s = a.sample.subset(cfg.score.sanity_n)
            ex = a.explained.get((name, method))  # its maps stand in for the unrandomised model's
            shared = ex.dir / "maps.safetensors" if ex is not None and len(s) <= len(a.x_sample) else None
            if shared is not None:
                parts["explain"] = ex.key
            fn = _on_model(a, name, sanity_stage, s, method, opts, cfg.explain, a.task, seed=cfg.seed,
                           granularity=cfg.score.sanity_granularity, logits=a.clean[name][:len(s)], maps=shared)
            try:
                res = a.runner.run(f"sanity/{name}/{method}", parts, fn).result
            except (MedxaiError, ValueError, RuntimeError) as exc:  # volumes only (2-D errors propagate as before)
                if not a.sample.volumes:
                    raise
                res = {"score": None, "passes": None, "layers": [], "spearman": [],
                       "reason": f"not run on volumes: {' '.join(str(exc).split())}"}
            a.sanity.append({"model": name, "method": method, **res})


def _shortcuts(a: _Audit) -> None:
    """Per model: reliance on the declared shortcut by intervention, then SpRAy over one method's maps."""
    from medxai.pipeline.shortcuts import discovery_stage, intervention_stage

    cfg = a.cfg
    for name, st in a.model_stages.items():
        if cfg.intervention.enabled and "intervention" in a.skipped:
            a.interventions[name] = {"reason": a.skipped["intervention"]}
        elif cfg.intervention.enabled:
            ic = cfg.intervention
            parts = {"train": st.key, "data": a.data_key, "intervention": ic.model_dump(), "n_boot": cfg.score.n_boot}
            sub = a.sample.subset(ic.n)
            fn = _on_model(a, name, intervention_stage, sub, a.datasets[cfg.data.split], ic, a.task,
                           cfg.score.n_boot, seed=cfg.seed, logits=a.clean[name][:len(sub)])
            a.interventions[name] = a.runner.run(f"intervention/{name}", parts, fn).result
        methods = cfg.explain.methods
        method = cfg.discovery.method or ("gradcam" if "gradcam" in methods else methods[0] if methods else None)
        ex = a.explained.get((name, method)) if method else None
        if cfg.discovery.enabled and ex is not None and "discovery" not in a.skipped:
            parts = {"explain": ex.key, "discovery": cfg.discovery.model_dump()}
            fn = _on_model(a, name, discovery_stage, a.x_sample, ex, cfg.discovery, a.class_names, a.task,
                           seed=cfg.seed, logits=a.clean[name][:len(a.x_sample)])
            a.discovery[name] = a.runner.run(f"discovery/{name}/{method}", parts, fn)


def _report(a: _Audit) -> tuple[dict, Path]:
    """Write report.json from the stages' results, then render report.html from it."""
    from medxai.pipeline.report_data import assemble_report
    from medxai.report import build_report

    report = assemble_report(a.cfg, a.out, a.data_st, a.model_stages, a.evals, a.attacks, a.corruptions,
                             a.gallery, a.explained, a.scores, a.sanity, sample=a.x_sample,
                             class_names=a.class_names, task=a.task, unavailable=a.unavailable,
                             interventions=a.interventions, discovery=a.discovery, skipped=a.skipped,
                             work=(a.runner.events, a.meter.flops))
    atomic_write_json(a.out / "report.json", report)
    from medxai.pipeline.model_card import write_model_cards

    write_model_cards(report, a.out)
    return report, build_report(a.out)


# -- the work of each stage when it is not cached (``d`` is the stage's fresh folder) ----------

def _guarded(a: _Audit, key: tuple[str, str], stage: str, parts: dict, fn: Callable[[Path], dict]
             ) -> StageResult | None:
    """Run the explain stage; on volumes an explainer that refuses them (or returns maps of another
    shape) is recorded as unavailable with its one-line error, not a crash (the stage is not cached)."""
    if not a.sample.volumes:
        return a.runner.run(stage, parts, fn)
    try:
        return a.runner.run(stage, parts, fn)
    except (MedxaiError, ValueError, RuntimeError) as exc:
        a.unavailable[key] = f"{key[1]} on volumes: {' '.join(str(exc).split())}"
        return None


def _unavailable(a: _Audit, name: str, method: str) -> bool:
    """Record and skip a method that cannot run on this model's format (layer hooks on TorchScript) or,
    on volumes, a method that explains 2-D images only."""
    from medxai.explain import REGISTRY

    why = a.model_stages[name].result.get("hooks_unavailable")
    registry_name = a.cfg.explain.options.get(method, {}).get("method", method)
    if a.sample.volumes:
        from medxai.pipeline.volumes import method_skip

        if (why_not := method_skip(method, registry_name)) is not None:
            a.unavailable[(name, method)] = why_not
            return True
    if why and getattr(REGISTRY.get(registry_name), "needs_hooks", False):
        a.unavailable[(name, method)] = f"{method} hooks the model's layers: {why}"
        return True
    return False


def _on_model(a: _Audit, name: str, stage_fn: Callable[..., dict], *args: Any, **kwargs: Any) -> Callable[[Path], dict]:
    """``stage_fn(d, model, *args, **kwargs)`` with model ``name`` loaded only if the stage runs."""
    return lambda d: stage_fn(d, a.model(name), *args, **kwargs)


def _clean_stage(d: Path, model: torch.nn.Module, s: EvalSample, eval_dir: Path) -> dict:
    """(N, K) float32 logits of the sample's clean images in ``logits.safetensors`` (the rows of a
    prefix of the sample are that prefix's logits): the evaluation stage's logits of the split at the
    sample's indices when it kept them with the same ids, else a no-grad forward in chunks of ``CHUNK``."""
    from medxai._util.io import save_safetensors
    from medxai.evaluate.predict import model_device
    from medxai.pipeline.explanations import CHUNK

    z, source = _eval_rows(eval_dir, s), "evaluate"
    if z is None:
        dev, source = model_device(model), "forward"
        with torch.no_grad():
            z = torch.cat([model(s.x[i:i + CHUNK].to(dev)).float().cpu() for i in range(0, len(s), CHUNK)])
    save_safetensors(d / "logits.safetensors", {"logits": z.contiguous()}, metadata={"n": str(len(s))})
    return {"n": len(s), "classes": int(z.shape[1]), "file": "logits.safetensors", "source": source}


def _eval_rows(eval_dir: Path, s: EvalSample) -> torch.Tensor | None:
    """The evaluation stage's logits at the sample's split indices, or None (not kept, ids differ)."""
    import json

    from safetensors.torch import load_file

    f, ids_f = eval_dir / "logits.safetensors", eval_dir / "ids.json"
    index = s.extra.get("index")
    if index is None or not f.is_file() or not ids_f.is_file():
        return None
    ids = json.loads(ids_f.read_text(encoding="utf-8"))
    index = [int(i) for i in index]
    if any(i >= len(ids) for i in index) or [str(ids[i]) for i in index] != [str(i) for i in s.ids]:
        return None
    return load_file(str(f))["logits"][index]


def _data_stage(a: _Audit, d: Path) -> dict:
    from medxai.pipeline.figures import data_examples

    s = a.sample.subset(8)
    if s.volumes:  # each volume's axial slice through the most lesion voxels (else the middle)
        from medxai.pipeline.volumes import axial_slices

        s = axial_slices(s)
    data_examples(s, a.class_names, a.task, d / "examples.png")
    return {**a.data_desc, "examples": "examples.png"}


def _train_stage(a: _Audit, mc: ModelConfig, d: Path) -> dict:
    from medxai.train import fit

    model = _build_model(a, mc)
    preset = {}
    if mc.preset:
        from medxai.models.vit_presets import vit_preset

        preset = vit_preset(*mc.preset.split("/"))
    train_cfg = {"seed": a.cfg.seed, "task": a.task, **preset, **mc.train}
    res = fit(model, a.datasets["train"], a.datasets["val"], train_cfg, run_dir=d / "run",
              meta={"class_names": a.class_names})
    return {"arch": mc.arch, "objective": (mc.train.get("objective") or {}).get("name", "standard"),
            "epochs_run": res.epochs_run, "best_epoch": res.best_epoch, "seconds": res.train_time_s}


def _card_stage(a: _Audit, name: str, d: Path) -> dict:
    """Load an outside model (every check of its card runs here) and record what was loaded."""
    from medxai.cards import load_card

    model, info = load_card(a.cards[name], class_order=a.class_names)
    a.loaded[name] = model
    return {"source": "card", "arch": f"{info.meta['format']} file", "objective": None, **info.meta}


def _module_stage(a: _Audit, name: str, d: Path) -> dict:
    from medxai.models import hooks_unavailable

    model = a.loaded[name]
    return {"source": "python", "arch": f"{type(model).__name__} (given in Python)", "objective": None,
            "hooks_unavailable": hooks_unavailable(model)}


def _build_model(a: _Audit, mc: ModelConfig) -> torch.nn.Module:
    """A fresh model for ``mc``: created (or ViT-initialised), warm-started from ``init_from``, frozen."""
    from medxai.models import create, freeze

    n_classes, in_chans = len(a.class_names), int(a.sample.x.shape[1])
    if mc.init is not None:  # the ViT study's initialisations, from local files
        from medxai.models.vit_presets import init_vit

        model = create(mc.arch, n_classes, in_chans=in_chans, **mc.options)
        init_vit(model, mc.init, mc.pretrained)
    else:
        options = dict(mc.options)
        if a.sample.volumes:  # MONAI's 3-D networks (``small-cnn3d`` is 3-D whatever it is told)
            options.setdefault("spatial_dims", 3)
        model = create(mc.arch, n_classes, in_chans=in_chans, pretrained=mc.pretrained, **options)
    if mc.init_from:
        model.load_state_dict(a.model(mc.init_from).state_dict())
    if mc.freeze is not None:
        freeze(model, **(mc.freeze if isinstance(mc.freeze, dict) else {"until": mc.freeze}))
    return model


def _eval_stage(a: _Audit, name: str, d: Path) -> dict:
    """Metrics on the whole split (``medxai.evaluate.predict``'s forward and probabilities); keeps the
    split's logits (``logits.safetensors``, ``ids.json``) for the clean stage."""
    import numpy as np

    from medxai._util.io import save_safetensors
    from medxai.evaluate import classification
    from medxai.evaluate.predict import dataset_task, forward_all, probabilities

    ds = a.datasets[a.cfg.data.split]
    task = dataset_task(ds, None)
    ids, y, logits = forward_all(a.model(name), ds, batch_size=128)  # as predict(...), keeping the logits
    y_true = y.numpy().astype(np.float32 if task == "multilabel" else np.int64)
    scores = probabilities(logits, task).numpy()
    save_safetensors(d / "logits.safetensors", {"logits": logits.clone()})
    atomic_write_json(d / "ids.json", [str(i) for i in ids])
    n_boot = int(a.cfg.evaluation.get("n_boot", 1000))
    metrics = classification(y_true, scores, a.task, class_names=a.class_names, n_boot=n_boot, seed=a.cfg.seed)
    out: dict[str, Any] = {"metrics": metrics, "n": len(ids)}
    groups = getattr(ds, "groups", None) or {}
    if a.cfg.subgroups.enabled and groups:
        from medxai.evaluate.subgroups import plot_subgroups, subgroup_metrics

        sg = a.cfg.subgroups
        out["subgroups"] = subgroup_metrics(y_true, scores, groups, a.task, a.class_names, n_boot=n_boot,
                                            seed=a.cfg.seed, min_n=sg.min_n, n_permutations=sg.n_permutations)
        plot_subgroups(out["subgroups"], d / "subgroups.png")
        out["subgroups_png"] = "subgroups.png"
    return out


def _attack_stage(a: _Audit, name: str, d: Path) -> dict:
    from medxai.attacks import evaluate as attack_eval

    c = a.cfg.attack
    s = a.sample.subset(c.n)
    return attack_eval(a.model(name), (s.x, s.y), eps_list=c.eps, norm=c.norm, steps=c.steps, task=a.task,
                       clean_logits=a.clean[name][:len(s)])


def _autoattack_stage(a: _Audit, name: str, d: Path) -> dict:
    """Standard AutoAttack at one budget: robust accuracy after each attack and which attacks ran."""
    from medxai.attacks import AutoAttack, format_eps

    c = a.cfg.attack
    if a.task == "multilabel":
        return {"reason": "AutoAttack needs one class per image (multilabel tasks are not supported)"}
    eps = c.autoattack.eps if c.autoattack.eps is not None else max(c.eps)
    s = a.sample.subset(c.autoattack.n)
    r = AutoAttack(a.model(name), eps, norm=c.norm, seed=a.cfg.seed, steps=c.autoattack.steps,
                   n_queries=c.autoattack.queries).run(s.x, s.y, clean_logits=a.clean[name][:len(s)])
    broken = [b for b in r.broken_by if b and b != "clean"]
    return {"eps": eps, "eps_label": format_eps(eps, c.norm), "norm": c.norm, "n": len(s.y),
            "clean_accuracy": r.clean_accuracy, "robust_accuracy": r.robust_accuracy,
            "robust_accuracy_after": r.robust_accuracy_after, "attacks_ran": list(r.attacks_ran),
            "broken_by": {k: broken.count(k) for k in dict.fromkeys(broken)}, "notes": list(r.notes)}


def _radius_stage(a: _Audit, name: str, d: Path) -> dict:
    """Each image's minimum-norm adversarial perturbation (pixel units) and its quartiles."""
    from medxai.attacks import robustness_radius

    c = a.cfg.attack
    if a.task == "multilabel":
        return {"reason": "minimum-norm attacks need one class per image (multilabel tasks are not supported)"}
    s = a.sample.subset(c.radius.n)
    norm = c.norm if c.radius.method == "deepfool" else "l2"  # CW is an L2 attack
    return robustness_radius(a.model(name), s.x, s.y, norm=norm, method=c.radius.method,
                             clean_logits=a.clean[name][:len(s)]).summary()


def _corruption_stage(a: _Audit, name: str, d: Path) -> dict:
    from medxai.pipeline.robustness import corruption_table
    from medxai.pipeline.volumes import corruption_skips

    c = a.cfg.corruption
    names = [n for n in c.names if n not in corruption_skips(c.names)] if a.sample.volumes else c.names
    sub = a.sample.subset(c.n)
    return corruption_table(a.model(name), sub, a.task, a.class_names, names, c.severities, seed=a.cfg.seed,
                            clean_logits=a.clean[name][:len(sub)])


def _gallery_stage(a: _Audit, d: Path) -> dict:
    from medxai.corruptions import gallery as corruption_gallery

    c = a.cfg.corruption
    corruption_gallery(a.sample.subset(1).x, d / "gallery.png", c.names, c.severities, seed=a.cfg.seed)
    return {"png": "gallery.png"}
