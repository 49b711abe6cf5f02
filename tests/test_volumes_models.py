"""Volume models: 3-D MONAI networks equal MONAI's own (same weights), small-cnn3d, the 3-D input
normalisation, the 2.5-D slice stack, configs that rebuild, and clear refusals."""

import pytest
import torch
from torch import nn

from medxai.errors import ConfigError, InputError
from medxai.models import create
from medxai.models.cnn import Normalize3d, SliceStack

MEAN, STD = 0.449, 0.226  # one-channel "imagenet" normalisation (mean of the ImageNet means / stds)


def _vol(b=2, c=1, shape=(32, 32, 32), seed=0):
    return torch.rand(b, c, *shape, generator=torch.Generator().manual_seed(seed))


def _same(ours: nn.Module, theirs: nn.Module, x: torch.Tensor, mean=MEAN, std=STD) -> None:
    """Load our weights into the anchor network and compare logits on the normalised input."""
    missing, unexpected = theirs.load_state_dict(ours.state_dict(), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs((x - mean) / std), atol=1e-5, rtol=1e-4)


def test_resnet18_3d_equals_monai():
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    ours = create("resnet18", 2, 1, spatial_dims=3)
    assert isinstance(ours.normalize, Normalize3d) and ours.default_cam_layer == "layer4"
    assert isinstance(ours.conv1, nn.Conv3d) and ours.spatial_dims == 3
    theirs = nets.ResNet(block="basic", layers=[2, 2, 2, 2], block_inplanes=[64, 128, 256, 512], spatial_dims=3,
                         n_input_channels=1, conv1_t_size=7, conv1_t_stride=2, shortcut_type="B",
                         bias_downsample=False, num_classes=2)
    _same(ours, theirs, _vol(2, shape=(16, 32, 32)))


def test_densenet121_and_efficientnet_3d_equal_monai():
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    ours = create("densenet121", 3, 1, spatial_dims=3)
    theirs = nets.DenseNet(spatial_dims=3, in_channels=1, out_channels=3, init_features=64, growth_rate=32,
                           block_config=(6, 12, 24, 16))
    _same(ours, theirs, _vol(1))
    ours = create("efficientnet-b0", 2, 1, spatial_dims=3)
    theirs = nets.EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=3, in_channels=1, num_classes=2)
    _same(ours, theirs, _vol(1))


def test_small_cnn3d_is_small_cnn_in_3d_and_normalises_first():
    torch.manual_seed(0)
    m = create("small-cnn3d", 2, 1, width=4, normalize=((0.3,), (0.2,))).eval()
    assert next(iter(m._modules)) == "normalize" and m.default_cam_layer == "features.block3"
    assert sum(isinstance(v, nn.Conv3d) for v in m.modules()) == 3
    raw = create("small-cnn3d", 2, 1, width=4, normalize="none").eval()
    raw.load_state_dict(m.state_dict())
    x = _vol(2, shape=(8, 16, 16))
    with torch.no_grad():
        torch.testing.assert_close(m(x), raw((x - 0.3) / 0.2))
    # the same architecture as small-cnn: parameter names and counts equal, kernels one rank up
    flat = create("small-cnn", 2, 1, width=4)
    assert [n for n, _ in flat.named_parameters()] == [n for n, _ in m.named_parameters()]
    conv3, conv2 = m.features.block1[0].weight, flat.features.block1[0].weight
    assert conv3.shape == (*conv2.shape, 3)
    # a 3-channel volume uses the ImageNet statistics per channel
    m3 = create("small-cnn3d", 2, 3, width=4)
    torch.testing.assert_close(m3.normalize.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))


def test_config_rebuilds_the_3d_and_the_2_5d_models():
    for kw in ({"name": "resnet18", "spatial_dims": 3}, {"name": "small-cnn3d", "width": 4},
               {"name": "small-cnn", "slices": 8, "width": 4}):
        torch.manual_seed(0)
        m = create(num_classes=2, in_chans=1, **kw).eval()
        again = create(**m.medxai_config).eval()
        again.load_state_dict(m.state_dict(), strict=True)
        x = _vol(1, shape=(8, 32, 32))
        with torch.no_grad():
            torch.testing.assert_close(m(x), again(x))


def test_2_5d_slice_stack_feeds_slices_as_channels():
    torch.manual_seed(0)
    m = create("small-cnn", 3, 2, slices=8, width=4).eval()
    assert isinstance(m, SliceStack) and m.default_cam_layer == "net.features.block3"
    assert m.net.features.block1[0].weight.shape[1] == 16  # C * D input channels
    x = _vol(2, c=2, shape=(8, 16, 16))
    stacked = torch.stack([x[:, c, d] for c in range(2) for d in range(8)], 1)  # channel c * D + d
    with torch.no_grad():
        torch.testing.assert_close(m(x), m.net(stacked))
        # the inner network normalises its C * D channels first, as any 2-D model
        torch.testing.assert_close(m.net(stacked), m.net.classifier(m.net.pool(
            m.net.features((stacked - MEAN) / STD)).flatten(1)))
    with pytest.raises(InputError, match=r"expects volumes \(B, C, 8, H, W\)"):
        m(_vol(1, c=2, shape=(6, 16, 16)))


def test_refusals_name_the_problem():
    with pytest.raises(ConfigError, match="has no 3-D variant"):
        create("resnet8", 2, 1, spatial_dims=3)
    with pytest.raises(ConfigError, match="spatial_dims must be 2 or 3"):
        create("resnet18", 2, 1, spatial_dims=4)
    with pytest.raises(ConfigError, match="slices"):
        create("resnet18", 2, 1, spatial_dims=3, slices=8)
    with pytest.raises(ConfigError, match="slices must be an int"):
        create("small-cnn", 2, 1, slices=0)
    m = create("small-cnn3d", 2, 1, width=4)
    with pytest.raises(InputError, match=r"expects volumes \(B, 1, D, H, W\)"):
        m(torch.rand(1, 1, 16, 16))
