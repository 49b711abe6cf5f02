"""Issue 19's acceptance test: ``small-cnn3d`` learns ``ct-nodule`` and its maps point at the nodules.

16^3 volumes, 600 training volumes, 15 epochs of ``medxai.train.fit`` (batch 16, lr 3e-3, cosine), a
200-volume test split. Measured (seeds 0 / 1 / 2 of data, model and training, 2 shared CPU cores,
10-16 s training, 14-21 s in all):

- test balanced accuracy 0.801 / 0.756 / 0.718, bootstrap 95 % CI lower bounds (200 replicates)
  0.744 / 0.702 / 0.657. Asserted: lower bound > 0.5 + 0.1.
- energy pointing game (Wang et al. 2020, Score-CAM, sec. 4.3: share of the positive map inside the mask)
  on the test nodule volumes (88-109), true nodule mask vs. the mask of another nodule volume
  (the batch rolled by one), mean over volumes:
  Grad-CAM 0.0045 vs 0.0031 / 0.0046 vs 0.0032 / 0.0039 vs 0.0023 (ratio 1.48 / 1.45 / 1.71; the true
  mask wins on 73 / 64 / 70 % of the volumes); integrated gradients 0.039 vs 0.0044 / 0.035 vs 0.0051 /
  0.032 vs 0.0046 (ratio 8.7 / 6.8 / 7.1; wins on 99 / 97 / 98 %). The masks cover ~0.2 % of the voxels
  (a random map scores ~0.002). Asserted (seed 0): Grad-CAM ratio >= 1.2 and wins >= 55 %; IG ratio >= 4
  and wins >= 90 %.
"""

from __future__ import annotations

import pytest
import torch

from medxai.data.volumes import SyntheticVolumeDataset
from medxai.evaluate import classification, predict
from medxai.explain import explain
from medxai.metrics import energy_pointing_game
from medxai.models import create
from medxai.train import fit

SIZE, N_TRAIN, N_TEST, EPOCHS, SEED = 16, 600, 200, 15, 0


class _Rendered(torch.utils.data.Dataset):
    """A ct-nodule split rendered once into memory: images (N, 1, D, H, W), labels (N,), masks (N, D, H, W)."""

    def __init__(self, split: str, n: int) -> None:
        ds = SyntheticVolumeDataset("ct-nodule", n, SIZE, SEED, split)
        items = [ds[i] for i in range(n)]
        self.task, self.class_names = ds.task, list(ds.class_names)
        self.x = torch.stack([it["image"] for it in items])
        self.y = torch.tensor([int(it["label"]) for it in items])
        self.masks = torch.stack([torch.as_tensor(it["mask"])[0] for it in items]).float()
        self.labels = self.y.numpy()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "label": self.y[i], "id": f"v{i:04d}"}


@pytest.fixture(scope="module")
def trained():
    train, test = _Rendered("train", N_TRAIN), _Rendered("test", N_TEST)
    assert train.x.shape[1:] == (1, SIZE, SIZE, SIZE) and 0.3 < train.y.float().mean() < 0.7
    torch.manual_seed(SEED)
    model = create("small-cnn3d", 2, 1)
    res = fit(model, train, None, {"epochs": EPOCHS, "batch_size": 16, "lr": 3e-3, "scheduler": "cosine",
                                   "device": "cpu", "seed": SEED})
    return res.model.eval(), test


@pytest.mark.slow
def test_small_cnn3d_balanced_accuracy_ci_above_chance(trained):
    model, test = trained
    _, y_true, scores = predict(model, test, task="binary")
    ev = classification(y_true, scores, "binary", test.class_names, n_boot=200, seed=0)
    value, ci = ev["metrics"]["balanced_accuracy"], ev["ci"]["balanced_accuracy"]
    print(f"\n[ct-nodule] balanced accuracy {value:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]")
    assert ci["low"] > 0.5 + 0.1, (value, ci)


@pytest.mark.slow
@pytest.mark.parametrize(("method", "min_ratio", "min_wins"),
                         [("gradcam", 1.2, 0.55), ("integrated_gradients", 4.0, 0.9)])
def test_maps_point_at_true_nodules_more_than_at_shuffled_masks(trained, method, min_ratio, min_wins):
    model, test = trained
    nodule = test.y == 1
    x, masks = test.x[nodule], test.masks[nodule]
    assert len(x) > 50 and bool((masks.flatten(1).sum(1) > 0).all())
    shuffled = masks.roll(1, 0)
    assert not torch.equal(shuffled, masks)
    maps = explain(model, x, method, 1)
    assert maps.shape == (len(x), 1, SIZE, SIZE, SIZE)
    true_epg, shuffled_epg = energy_pointing_game(maps, masks), energy_pointing_game(maps, shuffled)
    ratio = (true_epg.nanmean() / shuffled_epg.nanmean()).item()
    wins = (true_epg > shuffled_epg).float().mean().item()
    print(f"\n[ct-nodule] {method}: EPG true {true_epg.nanmean():.4f} shuffled {shuffled_epg.nanmean():.4f} "
          f"ratio {ratio:.2f} wins {wins:.2f}")
    assert ratio >= min_ratio and wins >= min_wins, (ratio, wins)
