"""Issue 20: the audit's work table (report["work"]) and one shared clean forward per model and image.

A tiny audit of a model given in Python, so the test can hook it: every forward is recorded with
whether gradients were on and which inputs are the evaluation sample's clean images.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from medxai._util.flops import WorkMeter, flops_per_image
from medxai.pipeline.audit import run_audit
from medxai.pipeline.config import load_config
from medxai.pipeline.data import eval_sample

N_TEST, N_SCORE, STEPS = 12, 8, 2
TINY = {
    "name": "work",
    "seed": 0,
    "data": {"synthetic": {"study": "cxr-pneumonia", "size": 16, "n_train": 8, "n_val": 8, "n_test": N_TEST,
                           "shortcut": 0.9}},
    "models": [{"name": "net", "given": True}],
    "evaluation": {"n_boot": 10},
    "subgroups": {"enabled": False},
    "attack": {"eps": [0, "1/255", "4/255"], "steps": STEPS, "n": N_TEST},
    "corruption": {"enabled": False},
    "intervention": {"enabled": False},
    "explain": {"methods": ["saliency"], "target": "predicted", "n_show": 4, "n_score": N_SCORE},
    "score": {"metrics": ["pointing_game", "sparseness"], "sanity_methods": ["saliency"], "sanity_n": 4,
              "n_boot": 10},
    "discovery": {"enabled": True, "method": "saliency", "size": 8, "max_clusters": 2},
}


class Net(nn.Module):
    """1 x 16 x 16 -> 2 logits: conv (1->4, 3x3, pad 1), ReLU, mean pool, linear (4->2)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


class Recorder:
    """Forward pre-hook: per call (grad enabled, rows equal to a clean sample image (their indices))."""

    def __init__(self, model: nn.Module, clean: torch.Tensor) -> None:
        self.clean, self.calls = clean, []
        self.handle = model.register_forward_pre_hook(self.hook)

    def hook(self, module: nn.Module, args: tuple) -> None:
        x = args[0].detach()
        flat, ref = x.reshape(len(x), -1), self.clean.reshape(len(self.clean), -1).to(x)
        hits = [j for row in flat for j in range(len(ref)) if torch.equal(row, ref[j])]
        self.calls.append((torch.is_grad_enabled(), hits))

    def clean_predictions(self) -> torch.Tensor:
        """(N,) no-grad forwards of each clean sample image (the prediction forwards)."""
        n = torch.zeros(len(self.clean), dtype=torch.long)
        for grad, hits in self.calls:
            if not grad:
                for j in hits:
                    n[j] += 1
        return n


@pytest.fixture(scope="module")
def audit(tmp_path_factory):
    out = tmp_path_factory.mktemp("work")
    net = Net().eval()
    cfg = load_config(copy.deepcopy(TINY))
    res = run_audit(cfg, out, given={"net": net})
    return out, net, cfg, res


def _rows(report: dict) -> dict[str, dict]:
    return {r["stage"]: r for r in report["work"]["rows"]}


def test_flops_per_image_counts_conv_and_linear_multiply_adds():
    # FlopCounterMode: 2 FLOPs per multiply-add of conv and matmul (bias adds, ReLU, mean not counted)
    conv = 2 * (1 * 3 * 3) * 4 * 16 * 16
    fc = 2 * 4 * 2
    assert flops_per_image(Net(), (1, 16, 16)) == conv + fc


def test_meter_counts_forwards_and_input_backwards_and_changes_nothing():
    net, x = Net(), torch.rand(5, 1, 16, 16)
    xg = x.clone().requires_grad_(True)
    g_ref = torch.autograd.grad(net(xg)[:, 1].sum(), xg)[0]
    meter = WorkMeter()
    meter.attach("net", net, (1, 16, 16))
    before = meter.snapshot()
    xg = x.clone().requires_grad_(True)
    g = torch.autograd.grad(net(xg)[:, 1].sum(), xg)[0]
    with torch.no_grad():
        net(x[:3])
    w = meter.since(before)["net"]
    meter.close()
    assert torch.equal(g, g_ref)  # the hooks change no value
    assert (w["calls"], w["images"], w["backward_images"]) == (2, 8, 5)
    assert w["flops"] == meter.flops["net"] * (8 + 2 * 5)
    net(x)
    assert meter.counts["net"]["calls"] == 2  # closed: nothing counted any more
    assert not net._forward_pre_hooks


def test_work_table_counts_explain_and_attack(audit):
    out = audit[0]
    report = json.loads((out / "report.json").read_text())
    rows = _rows(report)
    assert {"clean/net", "evaluate/net", "attack/net", "explain/net/saliency", "score/net/saliency",
            "sanity/net/saliency"} <= set(rows)
    # the evaluation stage: one forward of every test image; the clean stage reads its rows (no forward)
    assert rows["evaluate/net"]["forward_images"] == N_TEST
    assert (rows["clean/net"]["forward_images"], rows["clean/net"]["backward_images"]) == (0, 0)
    # saliency on N_SCORE images with one target each: N forwards and N input-backwards, no clean forward
    ex = rows["explain/net/saliency"]
    assert (ex["forward_images"], ex["backward_images"], ex["forward_calls"]) == (N_SCORE, N_SCORE, 1)
    f = report["work"]["flops_per_image"]["net"]
    assert ex["gflops"] == pytest.approx(f * (N_SCORE + 2 * N_SCORE) / 1e9, rel=1e-12)
    # attack (PGD, keep="best", restarts 1): no clean forward (it reads the shared clean logits); per eps and
    # attacked image
    # STEPS forward + input-backward steps and one no-grad forward of the final iterate (keep="best"),
    # whose logits give the adversarial prediction (no further forward): STEPS + 1 forwards, STEPS backwards
    (stage,) = (out / "stages" / "attack" / "net").iterdir()  # the attack stage's own result
    att = json.loads((stage / "result.json").read_text())
    attacked = sum(att["attacked"])  # images attacked per eps (none at eps 0; fooled ones not again)
    assert attacked > 0 and att["attacked"][0] == 0
    a = rows["attack/net"]
    assert a["forward_images"] == (STEPS + 1) * attacked
    assert a["backward_images"] == STEPS * attacked
    assert report["work"]["total"]["forward_images"] == sum(r["forward_images"] for r in rows.values()
                                                            if r["forward_images"] is not None)


def test_each_clean_image_is_predicted_once_across_the_shared_stages(audit):
    out, net, cfg, _ = audit
    from medxai.data import SyntheticDataset

    s = cfg.data.synthetic
    ds = SyntheticDataset(s.study, s.n_test, size=s.size, seed=s.seed, split="test", shortcut=s.shortcut)
    sample = eval_sample(ds, N_TEST, seed=cfg.seed)
    rec = Recorder(net, sample.x)
    force = {"evaluate", "clean", "attack", "explain", "score", "sanity", "discovery"}
    try:  # the evaluation and the stages that read the shared clean logits, recomputed
        res = run_audit(cfg, out, given={"net": net}, force=force)
    finally:
        rec.handle.remove()
    ran = sorted(e["stage"] for e in res.stages if not e["cached"])
    assert ran == ["attack/net", "clean/net", "discovery/net/saliency", "evaluate/net", "explain/net/saliency",
                   "sanity/net/saliency", "score/net/saliency"]
    assert rec.clean_predictions().tolist() == [1] * N_TEST  # in the evaluation stage, and nowhere else
    # the numbers do not depend on whether a stage was computed now or reused (counting changes nothing)
    first = json.loads((out / "report.json").read_text())
    assert not net._forward_pre_hooks
    again = run_audit(cfg, out, given={"net": net})
    assert all(e["cached"] for e in again.stages)
    second = json.loads((out / "report.json").read_text())
    for key in ("models", "robustness", "scores", "sanity", "discovery", "scorecard", "findings"):
        assert second[key] == first[key], key
    assert _rows(second)["explain/net/saliency"]["forward_images"] == 0  # reused: no work in this run


def test_report_html_has_the_work_appendix(audit):
    out, _, _, _ = audit
    report = json.loads((out / "report.json").read_text())
    html = (out / "report.html").read_text()
    assert 'id="work"' in html and "where the time went" in html
    ex = _rows(report)["explain/net/saliency"]
    row = html.split('data-stage="explain/net/saliency"')[1].split("</tr>")[0]
    cells = [c.split("<")[0] for c in row.split("<td>")[1:]]  # seconds, calls, forward images, backwards, GFLOPs
    assert cells[2:4] == [f"{ex['forward_images']:,}", f"{ex['backward_images']:,}"]
    assert float(cells[0]) == pytest.approx(ex["seconds"], abs=1e-3)


def test_counting_changes_no_result():
    # the same saliency maps and attack numbers with the meter's hooks on the model as without
    from medxai.attacks import evaluate as attack_eval
    from medxai.pipeline.explanations import explain_maps

    net, x = Net().eval(), torch.rand(6, 1, 16, 16)
    y, t = torch.tensor([0, 1, 0, 1, 0, 1]), torch.tensor([1, 0, 1, 1, 0, 0])

    def run() -> tuple[torch.Tensor, dict]:
        maps = explain_maps(net, x, t, "saliency", {}, "logit")
        return maps, attack_eval(net, (x, y), eps_list=[0, 2 / 255], steps=2, seed=0)

    maps0, att0 = run()
    meter = WorkMeter()
    meter.attach("net", net, (1, 16, 16))
    try:
        maps1, att1 = run()
    finally:
        meter.close()
    assert torch.equal(maps0, maps1) and att0 == att1
    w = meter.since({})["net"]
    assert w["backward_images"] == 6 + 2 * att1["attacked"][1]  # saliency, then the PGD steps


def test_clean_logits_are_the_sample_rows_of_the_evaluation(audit, tmp_path):
    # the clean stage's logits (rows of the evaluation stage's split logits at the sample's indices)
    # equal a direct forward of the sample (the stage's fallback when the evaluation kept no logits)
    from safetensors.torch import load_file

    from medxai.pipeline.audit import _clean_stage

    out, net, cfg, _ = audit
    (clean_dir,) = (out / "stages" / "clean" / "net").iterdir()
    assert json.loads((clean_dir / "result.json").read_text())["source"] == "evaluate"
    shared = load_file(str(clean_dir / "logits.safetensors"))["logits"]
    from medxai.data import SyntheticDataset

    s = cfg.data.synthetic
    ds = SyntheticDataset(s.study, s.n_test, size=s.size, seed=s.seed, split="test", shortcut=s.shortcut)
    sample = eval_sample(ds, N_TEST, seed=cfg.seed)
    res = _clean_stage(tmp_path, net, sample, tmp_path / "no-evaluation")
    assert res["source"] == "forward"
    direct = load_file(str(tmp_path / "logits.safetensors"))["logits"]
    with torch.no_grad():
        ref = net(sample.x)
    torch.testing.assert_close(direct, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(shared, ref, rtol=0, atol=1e-6)


def test_pgd_returns_the_logits_of_its_points():
    # keep="best": adv_logits are the logits of the returned points, so evaluate needs no forward to read them
    from medxai.attacks import PGD

    net, x, y = Net().eval(), torch.rand(6, 1, 16, 16), torch.tensor([0, 1, 0, 1, 0, 1])
    atk = PGD(net, 8 / 255, steps=3, keep="best", seed=0)
    x_adv = atk(x, y)
    with torch.no_grad():
        ref = net(x_adv)
    torch.testing.assert_close(atk.adv_logits, ref, rtol=0, atol=1e-6)
    last = PGD(net, 8 / 255, steps=3, keep="last", seed=0)
    last(x, y)
    assert last.adv_logits is None  # untracked: nothing to hand back, the caller runs the forward


def test_random_map_baseline_is_computed_once_per_model(tmp_path):
    # two methods scored by deletion: the seeded random-map baseline is the same draw for both, so the
    # second score stage reuses the first one's numbers instead of running its deletion curves again
    steps = 2
    cfg = copy.deepcopy(TINY)
    cfg.update(attack={"enabled": False}, discovery={"enabled": False})
    cfg["explain"]["methods"] = ["saliency", "input_x_gradient"]
    cfg["score"] = {"metrics": ["deletion"], "options": {"deletion": {"steps": steps}}, "sanity": False,
                    "n_boot": 10}
    run_audit(load_config(cfg), tmp_path, given={"net": Net().eval()})
    report = json.loads((tmp_path / "report.json").read_text())
    rows = _rows(report)
    curve = N_SCORE * (steps + 1)  # one deletion curve per image: the clean point and `steps` deletions
    assert rows["score/net/saliency"]["forward_images"] == 2 * curve  # its maps, then the random maps
    assert rows["score/net/input_x_gradient"]["forward_images"] == curve  # its maps only
    faith = {f["method"]: f for f in report["scores"]["faithfulness"]}
    assert faith["saliency"]["random_mean"] == faith["input_x_gradient"]["random_mean"]


def test_autoattack_radius_intervention_and_corruption_read_the_shared_clean_logits(tmp_path):
    # with every robustness and shortcut stage on, each clean sample image is still predicted once (in the
    # evaluation stage): AutoAttack, the DeepFool radius, the intervention (and its transplant) and the
    # corruption table take the shared clean logits instead of a forward of their own
    from medxai.data import SyntheticDataset

    full = copy.deepcopy(TINY)
    full["attack"].update(autoattack={"enabled": True, "n": 6, "steps": 2, "queries": 8},
                          radius={"enabled": True, "n": 6, "method": "deepfool"})
    full["intervention"] = {"enabled": True, "n": N_TEST}
    full["corruption"] = {"enabled": True, "names": ["gaussian_noise"], "severities": [1], "n": 6}
    cfg = load_config(full)
    s = cfg.data.synthetic
    ds = SyntheticDataset(s.study, s.n_test, size=s.size, seed=s.seed, split="test", shortcut=s.shortcut)
    sample = eval_sample(ds, N_TEST, seed=cfg.seed)
    net = Net().eval()
    rec = Recorder(net, sample.x)
    try:
        res = run_audit(cfg, tmp_path, given={"net": net})
    finally:
        rec.handle.remove()
    ran = {e["stage"].split("/")[0] for e in res.stages if not e["cached"]}
    assert {"autoattack", "radius", "intervention", "corrupt"} <= ran
    report = json.loads((tmp_path / "report.json").read_text())
    iv = report["intervention"]["models"]["net"]  # measured, with the transplant
    assert iv["difference"] is not None and iv["transplant"] is not None, report["intervention"]
    assert rec.clean_predictions().tolist() == [1] * N_TEST


def test_shared_clean_logits_change_no_number():
    # AutoAttack, the radius and the intervention give the same numbers from given clean logits as from
    # their own forward; wrong-shaped logits are refused
    from medxai.attacks import AutoAttack, robustness_radius
    from medxai.errors import InputError
    from medxai.evaluate.intervention import intervention_effect, transplant_effect

    net, x = Net().eval(), torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z = net(x)
    y = torch.tensor([0, 1, 0, 1, 1, 0, 1, 0])
    aa = AutoAttack(net, 4 / 255, steps=2, n_queries=8, seed=0)
    a0, a1 = aa.run(x, y), aa.run(x, y, clean_logits=z)
    assert torch.equal(a0.x_adv, a1.x_adv) and a0.broken_by == a1.broken_by
    r0 = robustness_radius(net, x, y, norm="l2")
    r1 = robustness_radius(net, x, y, norm="l2", clean_logits=z)
    assert torch.equal(r0.radius, r1.radius) and r0.reason == r1.reason
    region = torch.zeros(8, 1, 16, 16, dtype=torch.bool)
    region[:, :, 2:6, 2:6] = True
    i0 = intervention_effect(net, x, region, y.numpy(), n_boot=20)
    i1 = intervention_effect(net, x, region, y.numpy(), n_boot=20, clean_logits=z)
    assert i0 == i1
    t0 = transplant_effect(net, x[:4], x[4:5], region[:1], n_boot=20)
    assert t0 == transplant_effect(net, x[:4], x[4:5], region[:1], n_boot=20, clean_logits=z[:4])
    with pytest.raises(InputError, match="clean_logits must be"):
        aa.run(x, y, clean_logits=z[:5])
    with pytest.raises(InputError, match="clean_logits must be"):
        robustness_radius(net, x, y, clean_logits=z[:5])
    with pytest.raises(InputError, match="clean_logits must be"):
        intervention_effect(net, x, region, y.numpy(), clean_logits=z[:5])
    bad = z.clone()
    bad[2, 0] = float("nan")  # NaN logits are refused, not read as a prediction
    for call in (lambda: aa.run(x, y, clean_logits=bad), lambda: robustness_radius(net, x, y, clean_logits=bad),
                 lambda: intervention_effect(net, x, region, y.numpy(), clean_logits=bad)):
        with pytest.raises(InputError, match="NaN or Inf"):
            call()


def test_sanity_check_takes_the_explain_stage_maps_as_the_original(audit, tmp_path):
    # saliency draws nothing at random: the sanity check's unrandomised maps are the explain stage's rows
    # (no re-explanation), and its numbers equal a check that recomputes them
    from medxai.pipeline.explanations import reusable_maps, sanity_stage

    _, net, cfg, _ = audit
    out = tmp_path / "audit"
    run_audit(cfg, out, given={"net": net})  # every stage computed in this run, so its work is counted
    (sdir,) = (out / "stages" / "sanity" / "net" / "saliency").iterdir()
    shared = json.loads((sdir / "result.json").read_text())
    assert shared["original_maps"] == "explain stage"
    report = json.loads((out / "report.json").read_text())
    # one input-backward per image and randomisation step (conv, fc), none for the original maps
    assert _rows(report)["sanity/net/saliency"]["backward_images"] == cfg.score.sanity_n * len(shared["layers"])
    from medxai.data import SyntheticDataset

    s = cfg.data.synthetic
    ds = SyntheticDataset(s.study, s.n_test, size=s.size, seed=s.seed, split="test", shortcut=s.shortcut)
    sub = eval_sample(ds, N_TEST, seed=cfg.seed).subset(cfg.score.sanity_n)
    fresh = sanity_stage(tmp_path, net, sub, "saliency", {}, cfg.explain, "binary", seed=cfg.seed)
    assert fresh["original_maps"] == "computed"
    assert fresh["layers"] == shared["layers"]
    for key in ("spearman_abs", "ssim"):
        assert fresh[key] == pytest.approx(shared[key], abs=1e-6), key
    assert not reusable_maps("smoothgrad", {}) and not reusable_maps("integrated_gradients", {})
    assert reusable_maps("gradcam", {}) and not reusable_maps("saliency", {"method": "lime"})
