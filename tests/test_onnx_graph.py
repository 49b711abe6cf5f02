"""The ONNX interpreter (medxai.cards.onnx_graph) against onnxruntime and the original torch models."""

from __future__ import annotations

import re
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from medxai.cards.onnx_graph import OnnxModule, crosscheck, onnx_to_torch  # noqa: E402
from medxai.errors import ModelError  # noqa: E402

# ----------------------------------------------------------------------------------------------- models


class CNN(nn.Module):
    """(a) Conv + BN + ReLU + MaxPool + Conv + ReLU + global average pool + Flatten + Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.pool, self.flat, self.head = nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.flat(self.pool(self.features(x))))


class Residual(nn.Module):
    """(b) stride-2 stem, grouped conv, residual add, AvgPool without pad counting, LeakyReLU, Dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8)
        self.conv1, self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=4), nn.Conv2d(8, 8, 3, padding=1)
        self.act, self.drop = nn.LeakyReLU(0.1), nn.Dropout(0.3)
        self.pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.stem(x)))
        x = self.act(x + self.conv2(self.act(self.conv1(x))))
        return self.head(self.drop(self.pool(x).mean(dim=(2, 3))))


class TinyViT(nn.Module):
    """(c) patch embedding, CLS token, LayerNorm, hand-written multi-head attention, GELU MLP, token mean."""

    def __init__(self, dim: int = 16, heads: int = 2, patch: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.patch = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(0.1 * torch.randn(1, 17, dim))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        b, n, d = t.shape
        t = torch.cat([self.cls.expand(b, -1, -1), t], dim=1) + self.pos
        qkv = self.qkv(self.norm1(t)).reshape(b, n + 1, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = (qkv[0] @ qkv[1].transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(dim=-1)
        t = t + self.proj((att @ qkv[2]).transpose(1, 2).reshape(b, n + 1, d))
        t = t + self.mlp(self.norm2(t))
        return self.head(t.mean(dim=1))


class SoftmaxNet(nn.Module):
    """(d) assorted activations, dilated conv, ceil-mode max pool, BatchNorm1d, ending in softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=2, dilation=2)
        self.prelu = nn.PReLU(6, init=0.2)
        self.head, self.bn = nn.Linear(6, 5), nn.BatchNorm1d(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(F.hardswish(self.conv1(x)))
        x = self.prelu(F.elu(x) + torch.tanh(x) * torch.sigmoid(x))
        x = F.relu6(x) + F.hardsigmoid(x) + F.selu(x)
        x = F.max_pool2d(x, 3, stride=2, padding=1, ceil_mode=True)
        x = F.adaptive_max_pool2d(x, 1).flatten(1)
        return torch.softmax(self.bn(self.head(x)), dim=1)


class UpNet(nn.Module):
    """(e) bilinear and nearest upsampling, ConvTranspose, reflect padding."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3)
        self.up = nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1, output_padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        y = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        y = y + F.interpolate(x, scale_factor=2, mode="nearest") + self.up(x)
        y = self.conv2(F.pad(y, (1, 2, 0, 1), mode="reflect"))
        return self.head(y.mean(dim=(2, 3)))


def _randomise_bn(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.3, 0.3)
    return model.eval()


MODELS = {"cnn": CNN, "residual": Residual, "vit": TinyViT, "softmax": SoftmaxNet, "upsample": UpNet}


def _export(model: nn.Module, path, opset: int = 17) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.rand(2, 3, 16, 16),), str(path), dynamo=False, input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                          opset_version=opset)


def _ort(path_or_proto, x: np.ndarray) -> np.ndarray:
    src = path_or_proto.SerializeToString() if isinstance(path_or_proto, onnx.ModelProto) else str(path_or_proto)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _last_conv(net: OnnxModule) -> str:
    return [name for name in net.layer_names() if net.op_types[name] == "Conv"][-1]


def _capture(module: nn.Module, store: list) -> torch.utils.hooks.RemovableHandle:
    return module.register_forward_hook(lambda mod, args, out: store.append(out.detach()))


@pytest.fixture
def cnn_onnx(tmp_path):
    torch.manual_seed(0)
    model = _randomise_bn(CNN())
    path = tmp_path / "model.onnx"
    _export(model, path)
    return model, path


# ----------------------------------------------------------------------------------------------- whole models


@pytest.mark.parametrize("opset", [13, 17, 18, 20])
@pytest.mark.parametrize("name", list(MODELS))
def test_models_match_torch_and_onnxruntime(name, opset, tmp_path):
    torch.manual_seed(1)
    model = _randomise_bn(MODELS[name]())
    path = tmp_path / f"{name}.onnx"
    _export(model, path, opset)
    net = onnx_to_torch(path).eval()
    x = torch.rand(3, 3, 16, 16)  # exported with batch 2
    with torch.no_grad():
        ref, got = model(x), net(x)
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() < 1e-5
    assert np.abs(got.numpy() - _ort(path, x.numpy())).max() < 1e-5

    grads = []
    for m in (model, net):
        xi = x.clone().requires_grad_(True)
        grads.append(torch.autograd.grad(m(xi)[:, 1].sum(), xi)[0])
    assert grads[0].abs().max() > 0
    assert (grads[0] - grads[1]).abs().max().item() < 1e-5

    name_conv = _last_conv(net)
    torch_conv = model.get_submodule(net.onnx_names[name_conv].split("/")[-2])
    seen_ref, seen_got = [], []
    handles = [_capture(torch_conv, seen_ref), _capture(net.get_submodule(name_conv), seen_got)]
    with torch.no_grad():
        model(x), net(x)
    for h in handles:
        h.remove()
    assert len(seen_got) == 1 and seen_got[0].shape == seen_ref[0].shape
    assert (seen_got[0] - seen_ref[0]).abs().max().item() < 1e-5


def test_vit_at_opset_18_and_layer_order(tmp_path):
    torch.manual_seed(2)
    model, path = TinyViT().eval(), tmp_path / "vit18.onnx"
    _export(model, path, 18)
    net = onnx_to_torch(path)
    x = torch.rand(1, 3, 16, 16)
    assert crosscheck(path, net, x) < 1e-5
    assert (net(x) - model(x)).abs().max().item() < 1e-5
    names = net.layer_names()
    assert [m for m in names if net.op_types[m] == "Conv"] == ["patch_Conv"]
    assert names.index("patch_Conv") < names.index("head_Gemm" if "head_Gemm" in names else "head_MatMul")
    graph = onnx.load(str(path)).graph
    assert len(names) == len(graph.node) == len(set(names))
    floats = sum(int(np.prod(t.dims)) for t in graph.initializer if t.data_type == TensorProto.FLOAT)
    assert sum(p.numel() for p in net.parameters()) == floats  # CLS token, positions, LayerNorm weights included
    assert isinstance(net.get_submodule("Expand").const0, nn.Parameter)  # the CLS token


def test_parameters_are_the_float_weight_initializers(cnn_onnx):
    model, path = cnn_onnx
    graph = onnx.load(str(path)).graph
    floats = [t for t in graph.initializer if t.data_type == TensorProto.FLOAT]
    consumers = {v: nd.op_type for nd in graph.node for v in nd.input}
    assert floats and all(consumers[t.name] in ("Conv", "Gemm") for t in floats)
    net = onnx_to_torch(path)
    n_params = sum(p.numel() for _, p in net.named_parameters())
    folded_bn = sum(p.numel() for p in model.features[1].parameters())
    n_float = sum(int(np.prod(t.dims)) for t in floats)
    assert n_params == n_float == sum(p.numel() for p in model.parameters()) - folded_bn
    assert not any(b.is_floating_point() for b in net.buffers())  # BN was folded; the rest are shapes

    x = torch.rand(2, 3, 16, 16)
    before = net(x).detach()
    conv = net.get_submodule(_last_conv(net))
    assert isinstance(conv.weight, nn.Parameter)
    with torch.no_grad():
        conv.weight.add_(0.5 * torch.randn_like(conv.weight))
    assert (net(x) - before).abs().max().item() > 1e-3


def test_crosscheck_passes_faithful_and_catches_altered(cnn_onnx):
    _, path = cnn_onnx
    net = onnx_to_torch(str(path))
    x = torch.rand(2, 3, 16, 16)
    assert crosscheck(path, net, x) < 1e-5
    with torch.no_grad():
        net.get_submodule(_last_conv(net)).weight.mul_(2.0)
    with pytest.raises(ModelError, match=re.escape(str(path)) + ".*differs from onnxruntime"):
        crosscheck(path, net, x)


def test_float64_and_device(cnn_onnx):
    _, path = cnn_onnx
    net = onnx_to_torch(path)
    x = torch.rand(2, 3, 16, 16)
    y32 = net(x)
    assert y32.device == x.device and y32.dtype == torch.float32
    y64 = net.to(torch.float64)(x.double())
    assert y64.dtype == torch.float64 and y64.device == x.device
    assert (y64.float() - y32).abs().max().item() < 1e-5


# ----------------------------------------------------------------------------------------------- refusals


def _save(path, nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.save(model, str(path))
    return path


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def test_unsupported_ops_are_all_named(tmp_path):
    nodes = [helper.make_node("Relu", ["X"], ["a"]), helper.make_node("FooBar", ["a"], ["b"]),
             helper.make_node("DFT", ["b"], ["Y"])]
    path = _save(tmp_path / "odd.onnx", nodes, [_vi("X", [1, 4])], [_vi("Y", [1, 4])])
    with pytest.raises(ModelError) as info:
        onnx_to_torch(path)
    msg = str(info.value)
    assert str(path) in msg and "unsupported ONNX operators: DFT, FooBar" in msg and "\n" not in msg


def test_foreign_domain_and_refused_attributes(tmp_path):
    node = helper.make_node("FusedConv", ["X"], ["Y"], domain="com.microsoft")
    graph = helper.make_graph([node], "g", [_vi("X", [1, 4])], [_vi("Y", [1, 4])])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    with pytest.raises(ModelError, match=r"non-default domains are not supported: com\.microsoft\.FusedConv"):
        onnx_to_torch(model)
    cubic = helper.make_node("Resize", ["X", "", "s"], ["Y"], mode="cubic")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "s")
    path = _save(tmp_path / "cubic.onnx", [cubic], [_vi("X", [1, 1, 4, 4])], [_vi("Y", [1, 1, 8, 8])], [scales])
    with pytest.raises(ModelError, match=r"cubic\.onnx: .*Resize mode 'cubic'"):
        onnx_to_torch(path)


def test_two_inputs_missing_and_garbage_files(tmp_path):
    path = _save(tmp_path / "two.onnx", [helper.make_node("Add", ["A", "B"], ["Y"])],
                 [_vi("A", [2]), _vi("B", [2])], [_vi("Y", [2])])
    with pytest.raises(ModelError, match=r"two\.onnx: the graph must have one input and one output, it has 2 inputs"):
        onnx_to_torch(path)
    missing = tmp_path / "nowhere" / "model.onnx"
    with pytest.raises(ModelError, match=re.escape(str(missing))):
        onnx_to_torch(missing)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\xff not a protobuf \x13\x37" * 20)
    with pytest.raises(ModelError, match=r"junk\.onnx: not an ONNX"):
        onnx_to_torch(junk)


def test_missing_packages_say_what_to_install(monkeypatch, cnn_onnx):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    net = onnx_to_torch(cnn_onnx[1])
    with pytest.raises(ModelError, match="pip install onnx onnxruntime"):
        crosscheck(cnn_onnx[1], net, torch.rand(1, 3, 16, 16))
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ModelError, match="needs the onnx package: pip install onnx onnxruntime"):
        onnx_to_torch(cnn_onnx[1])


def test_names_are_sanitised_deduplicated_and_shared_weights_kept_once(tmp_path):
    w = numpy_helper.from_array(np.random.default_rng(0).uniform(0.1, 1, (4, 4)).astype(np.float32), "blocks.0.w")
    nodes = [helper.make_node("MatMul", ["X", "blocks.0.w"], ["a"], name="/features/features.0/MatMul"),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("MatMul", ["b", "blocks.0.w"], ["c"], name="/features/features.0:MatMul"),
             helper.make_node("Identity", ["c"], ["Y"], name="forward")]
    path = _save(tmp_path / "names.onnx", nodes, [_vi("X", ["n", 4])], [_vi("Y", ["n", 4])], [w])
    net = onnx_to_torch(path)
    assert net.layer_names() == ["features_features_0_MatMul", "Relu_1", "features_features_0_MatMul_1", "forward_1"]
    assert net.op_types["Relu_1"] == "Relu"
    params = dict(net.named_parameters())
    assert list(params) == ["shared.blocks_0_w"]
    x = torch.rand(3, 4)
    assert crosscheck(path, net, x) < 1e-5
    net(x).sum().backward()
    assert params["shared.blocks_0_w"].grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------- single operators


def _init(name, array):
    array = np.asarray(array)
    return numpy_helper.from_array(array.astype(np.int64) if array.dtype.kind == "i" else array, name)


R = np.random.default_rng(3)
W = {k: R.normal(size=s).astype(np.float32) for k, s in
     {"w2": (4, 2, 3, 3), "w1": (4, 3, 3), "w3": (3, 2, 3, 3, 3), "wt": (4, 3, 3, 3), "wt2": (4, 2, 3, 3),
      "b4": (4,), "b3": (3,), "m": (5, 6), "c": (1, 6), "e": (4, 5)}.items()}
INT = TensorProto.INT64

# (op, x shape, ONNX inputs after X, initializers, attributes, opset, output type)
CASES = [
    ("Conv", (2, 4, 9, 8), ["w2", "b4"], {}, dict(group=2, strides=[2, 1], pads=[1, 0, 2, 1], dilations=[1, 2]), 17),
    ("Conv", (1, 2, 7, 7), ["w2"], {}, dict(auto_pad="SAME_UPPER", strides=[2, 2]), 17),
    ("Conv", (1, 2, 8, 7), ["w2"], {}, dict(auto_pad="SAME_LOWER", strides=[3, 2]), 17),
    ("Conv", (1, 2, 8, 7), ["w2"], {}, dict(auto_pad="VALID", strides=[2, 2]), 11),
    ("Conv", (2, 3, 10), ["w1", "b4"], {}, dict(pads=[2, 1], strides=[2]), 13),
    ("Conv", (1, 2, 5, 6, 5), ["w3", "b3"], {}, dict(pads=[1, 0, 1, 1, 1, 0], dilations=[1, 2, 1]), 13),
    ("ConvTranspose", (1, 4, 5, 5), ["wt", "b3"], {}, dict(strides=[2, 2], pads=[1, 0, 1, 2], output_padding=[1, 1]),
     17),
    ("ConvTranspose", (1, 4, 4, 5), ["wt2"], {}, dict(group=2, strides=[2, 3], dilations=[2, 1]), 17),
    ("ConvTranspose", (1, 4, 4, 4), ["wt"], {}, dict(strides=[2, 2], output_shape=[9, 8]), 17),
    ("MaxPool", (1, 2, 8, 9), [], {}, dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1), 17),
    ("MaxPool", (1, 2, 9, 9), [], {}, dict(kernel_shape=[2, 3], dilations=[2, 1], strides=[2, 2]), 17),
    ("MaxPool", (1, 2, 7, 8), [], {}, dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"), 17),
    ("AveragePool", (1, 2, 8, 9), [], {}, dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 2, 1], ceil_mode=1,
                                               count_include_pad=1), 17),
    ("AveragePool", (1, 2, 8, 9), [], {}, dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 2, 1], ceil_mode=1),
     17),
    ("MaxPool", (1, 2, 7, 7), [], {}, dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1), 17),
    ("AveragePool", (1, 2, 7, 7), [], {}, dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1,
                                               count_include_pad=1), 17),
    ("AveragePool", (2, 3, 11), [], {}, dict(kernel_shape=[4], strides=[3], pads=[2, 2], count_include_pad=1), 13),
    ("Resize", (1, 2, 5, 6), ["", "s"], {"s": np.array([1, 1, 1.5, 2.0], np.float32)},
     dict(mode="linear", coordinate_transformation_mode="half_pixel"), 13),
    ("Resize", (1, 2, 5, 6), ["", "s"], {"s": np.array([1, 1, 2.0, 0.5], np.float32)},
     dict(mode="linear", coordinate_transformation_mode="pytorch_half_pixel"), 13),
    ("Resize", (1, 2, 5, 6), ["", "", "z"], {"z": np.array([1, 2, 7, 4], np.int64)},
     dict(mode="linear", coordinate_transformation_mode="align_corners"), 13),
    ("Resize", (1, 2, 5, 6), ["", "s"], {"s": np.array([1, 1, 2.0, 1.5], np.float32)},
     dict(mode="linear", coordinate_transformation_mode="asymmetric"), 13),
    ("Resize", (1, 2, 5, 6), ["", "s"], {"s": np.array([1, 1, 1.5, 2.5], np.float32)},
     dict(mode="nearest", coordinate_transformation_mode="half_pixel"), 13),
    ("Resize", (1, 2, 5, 6), ["", "", "z"], {"z": np.array([1, 2, 8, 9], np.int64)},
     dict(mode="nearest", coordinate_transformation_mode="align_corners", nearest_mode="round_prefer_ceil"), 13),
    ("Resize", (1, 2, 5, 6), ["roi", "s"], {"roi": np.zeros(0, np.float32),
                                            "s": np.array([1, 1, 3.0, 2.0], np.float32)},
     dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"), 11),
    ("Resize", (1, 2, 5, 6), ["", "s"], {"s": np.array([1, 1, 1.7, 0.6], np.float32)},
     dict(mode="nearest", coordinate_transformation_mode="pytorch_half_pixel", nearest_mode="ceil"), 13),
    ("Pad", (2, 3, 4, 5), ["p"], {"p": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)}, dict(mode="reflect"), 13),
    ("Pad", (2, 3, 4, 5), ["p"], {"p": np.array([0, 1, 3, 0, 0, 0, 1, 4], np.int64)}, dict(mode="edge"), 13),
    ("Pad", (2, 3, 4, 5), ["p", "v"], {"p": np.array([0, 0, 1, -1, 0, 2, 0, 1], np.int64),
                                       "v": np.array(1.5, np.float32)}, {}, 13),
    ("Slice", (3, 8, 6), ["st", "en", "ax", "sp"], {"st": np.array([5, -1]), "en": np.array([1, -7]),
                                                    "ax": np.array([1, 2]), "sp": np.array([-2, -1])}, {}, 13),
    ("Slice", (3, 8, 6), ["st", "en"], {"st": np.array([1, 2]), "en": np.array([2**62, 7])}, {}, 13),
    ("Gather", (3, 5), ["i"], {"i": np.array([[0, -1], [2, 1]], np.int64)}, dict(axis=1), 13),
    ("Softmax", (2, 3, 4), [], {}, dict(axis=1), 11),
    ("LogSoftmax", (2, 3, 4), [], {}, dict(axis=1), 13),
    ("Softmax", (2, 3, 4), [], {}, {}, 13),
    ("Dropout", (2, 3, 4), [], {}, {}, 13),
    ("ReduceMax", (2, 3, 4), ["ax"], {"ax": np.array([-2], np.int64)}, {}, 18),
    ("Clip", (2, 6), [], {}, {"min": -0.2, "max": 0.3}, 7),
    ("Clip", (2, 6), ["lo"], {"lo": np.array(0.1, np.float32)}, {}, 13),
    ("ReduceMean", (2, 3, 4), ["ax"], {"ax": np.array([1, -1], np.int64)}, dict(keepdims=0), 18),
    ("ReduceSum", (2, 3, 4), [], {}, dict(noop_with_empty_axes=1), 13),
    ("ReduceMax", (2, 3, 4), [], {}, dict(axes=[0, 2]), 13),
    ("LayerNormalization", (2, 5, 6), ["m"], {}, dict(axis=-2, epsilon=1e-3), 17),
    ("Gemm", (5, 2), ["m", "c"], {}, dict(transA=1, alpha=0.5, beta=2.0), 13),
    ("Einsum", (2, 3, 4), ["e"], {}, dict(equation="bij,jk->bik"), 13),
    ("Expand", (3, 1), ["sh"], {"sh": np.array([2, 1, 4], np.int64)}, {}, 13),
    ("Unsqueeze", (3, 4), [], {}, dict(axes=[0, -1]), 11),
    ("Squeeze", (3, 1, 4, 1), ["ax"], {"ax": np.array([-1], np.int64)}, {}, 13),
    ("Flatten", (2, 3, 4, 5), [], {}, dict(axis=-1), 13),
    ("Transpose", (2, 3, 4), [], {}, {}, 13),
    ("Selu", (2, 6), [], {}, dict(alpha=1.5, gamma=1.2), 13),
    ("Elu", (2, 6), [], {}, dict(alpha=0.7), 13),
    ("HardSigmoid", (2, 6), [], {}, dict(alpha=0.3, beta=0.4), 13),
    ("HardSwish", (2, 6), [], {}, {}, 14),
    ("Gelu", (2, 6), [], {}, dict(approximate="tanh"), 20),
    ("PRelu", (2, 4, 3), ["sl"], {"sl": np.array([[0.1], [0.2], [-0.3], [0.5]], np.float32)}, {}, 13),
    ("Pow", (2, 6), ["ex"], {"ex": np.array(3.0, np.float32)}, {}, 13),
    ("Shape", (2, 3, 4, 5), [], {}, dict(start=1, end=-1), 15, INT),
    ("Cast", (2, 6), [], {}, dict(to=TensorProto.INT32), 13, TensorProto.INT32),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_single_operator_matches_onnxruntime(case):
    op, shape, names, arrays, attrs, opset, *elem = case
    inits = [_init(k, v) for k, v in arrays.items()] + [_init(k, W[k]) for k in names if k in W]
    node = helper.make_node(op, ["X", *names], ["Y"], **attrs)
    graph = helper.make_graph([node], "single", [_vi("X", list(shape))], [_vi("Y", None, *elem)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    x = np.random.default_rng(4).normal(size=shape).astype(np.float32)
    ref = _ort(model, x)
    model.graph.output[0].CopyFrom(_vi("Y", list(ref.shape), *elem))  # the checker wants the output's shape
    got = onnx_to_torch(model)(torch.from_numpy(x)).detach().numpy()
    assert got.shape == ref.shape and got.dtype == ref.dtype
    assert np.abs(got.astype(np.float64) - ref).max() < 1e-5


def test_shape_subgraph_split_and_constants_follow_the_batch():
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape, Split, ConstantOfShape, Range, Where, Equal."""
    i64 = lambda name, v: helper.make_node("Constant", [], [name], value=_init(name, np.array(v, np.int64)))
    nodes = [
        helper.make_node("Shape", ["X"], ["s"]), i64("zero", 0), i64("minus", [-1]), i64("axis1", [1]),
        helper.make_node("Gather", ["s", "zero"], ["b"]),
        helper.make_node("Unsqueeze", ["b", "ax0"], ["b1"]),
        helper.make_node("Concat", ["b1", "minus"], ["shape"], axis=0),
        helper.make_node("Reshape", ["X", "shape"], ["flat"]),
        helper.make_node("Split", ["flat", "sizes"], ["p", "q"], axis=1),
        helper.make_node("Mul", ["p", "p"], ["pp"]),
        helper.make_node("Concat", ["q", "pp"], ["cat"], axis=1),
        helper.make_node("Shape", ["cat"], ["cs"]),
        helper.make_node("ConstantOfShape", ["cs"], ["ones"], value=_init("v", np.array([1.0], np.float32))),
        helper.make_node("Range", ["zero", "b", "one"], ["r"]),
        helper.make_node("Equal", ["cat", "ones"], ["eq"]),
        helper.make_node("Where", ["eq", "ones", "cat"], ["w"]),
        helper.make_node("ReduceSum", ["w", "axis1"], ["Y"], keepdims=0),
    ]
    inits = [_init("ax0", np.array([0], np.int64)), _init("sizes", np.array([5, 7], np.int64)),
             _init("one", np.array(1, np.int64))]
    graph = helper.make_graph(nodes, "shapes", [_vi("X", ["n", 3, 4])], [_vi("Y", ["n"])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    net = onnx_to_torch(model)
    for batch in (1, 4):
        x = torch.rand(batch, 3, 4)
        assert net(x).shape == (batch,)
        assert crosscheck(model, net, x) < 1e-5


def test_split_into_num_outputs_at_opset_18():
    nodes = [helper.make_node("Split", ["X"], ["a", "b", "c"], axis=1, num_outputs=3),
             helper.make_node("Concat", ["c", "a"], ["Y"], axis=1)]
    graph = helper.make_graph(nodes, "split", [_vi("X", ["n", 7])], [_vi("Y", ["n", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = torch.arange(14.0).reshape(2, 7)
    got = onnx_to_torch(model)(x)
    assert torch.equal(got, torch.cat([x[:, 6:], x[:, :3]], dim=1))
    assert crosscheck(model, onnx_to_torch(model), x) == 0.0


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_broadcasting_binary_ops_match_onnxruntime(data):
    op = data.draw(st.sampled_from(["Add", "Sub", "Mul", "Div"]))
    out = data.draw(st.lists(st.integers(1, 4), min_size=0, max_size=4))

    def operand() -> list[int]:
        drop = data.draw(st.integers(0, len(out)))
        return [d if data.draw(st.booleans()) else 1 for d in out[drop:]]

    x_shape, c_shape = operand(), operand()
    out_shape = list(np.broadcast_shapes(tuple(x_shape), tuple(c_shape)))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    const = rng.uniform(0.5, 2.0, size=c_shape).astype(np.float32) * rng.choice([-1, 1], size=c_shape)
    inputs = ["X", "C"] if data.draw(st.booleans()) else ["C", "X"]
    graph = helper.make_graph([helper.make_node(op, inputs, ["Y"])], "bcast", [_vi("X", x_shape)],
                              [_vi("Y", out_shape)], initializer=[_init("C", np.asarray(const, np.float32))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    net = onnx_to_torch(model)
    assert len(list(net.parameters())) == (1 if c_shape else 0)
    x = torch.from_numpy(rng.normal(size=x_shape).astype(np.float32))
    assert crosscheck(model, net, x, atol=1e-6, rtol=1e-6) < 1e-5
