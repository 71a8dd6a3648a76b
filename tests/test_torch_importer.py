"""The PyTorch importer: real architectures import without opaque nodes and match eager PyTorch."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

import heteropass as hp
from heteropass.ir import run_graph, verify
from heteropass.ir.torch_importer import (
    TorchImportError,
    TorchProgram,
    UnsupportedOpError,
    import_aten_graph,
    import_module,
)
from heteropass.ir.types import DType
from heteropass.testing import models

RTOL = 1e-5


def _assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    if not want.is_floating_point() or want.numel() == 0:
        assert torch.equal(got, want)
        return
    scale = want.abs().max().clamp_min(1e-30)
    assert ((got - want).abs().max() / scale).item() <= RTOL


def _run(program: TorchProgram, args: tuple, kwargs: dict | None = None) -> object:
    outputs = run_graph(program.graph, *program.flatten_inputs(args, kwargs))
    return program.unflatten_outputs(outputs)


def _import_and_compare(model: nn.Module, example: tuple, fresh: tuple) -> TorchProgram:
    """Import on `example`, then check the graph against eager on `fresh` (other random inputs)."""
    program = import_module(model, example)
    verify(program.graph)
    assert "opaque" not in program.graph.op_counts(), program.graph
    with torch.no_grad():
        want = model(*fresh)
    got = _run(program, fresh)
    got_leaves, got_spec = torch.utils._pytree.tree_flatten(got)
    want_leaves, want_spec = torch.utils._pytree.tree_flatten(want)
    assert got_spec == want_spec and type(got) is type(want)
    for g, w in zip(got_leaves, want_leaves, strict=True):
        _assert_close(g, w)
    return program


def test_mlp_matches_eager() -> None:
    program = _import_and_compare(models.mlp(), models.mlp_inputs(), models.mlp_inputs(seed=2))
    assert program.graph.op_counts() == {"gelu": 1, "linear": 3, "relu": 1}
    assert [v.name for v in program.graph.inputs] == ["x"]
    assert "fc1.weight" in program.graph.constants


def test_resnet_cnn_matches_eager() -> None:
    program = _import_and_compare(models.resnet_cnn(), models.resnet_inputs(), models.resnet_inputs(seed=2))
    counts = program.graph.op_counts()
    assert counts["conv"] == 6 and counts["batch_norm"] == 6 and counts["max_pool"] == 1
    assert "layer2.shortcut.1.running_var" in program.graph.constants


@pytest.mark.parametrize("use_sdpa", [False, True], ids=["matmul-softmax", "sdpa"])
def test_gpt2_style_matches_eager(use_sdpa: bool) -> None:
    program = _import_and_compare(models.gpt2_style(use_sdpa), models.gpt2_style_inputs(),
                                  models.gpt2_style_inputs(seed=2))
    counts = program.graph.op_counts()
    assert counts["layer_norm"] == 5 and counts["linear"] == 8
    if use_sdpa:
        assert counts["scaled_dot_product_attention"] == 2
    else:
        assert counts["softmax"] == 2 and counts["where"] == 2
    assert [v.name for v in program.graph.inputs] == ["idx"]
    assert "blocks.1.attn.c_attn.weight" in program.graph.constants


@pytest.mark.slow
def test_hf_gpt2_matches_eager() -> None:
    program = _import_and_compare(models.hf_gpt2(), models.hf_gpt2_inputs(), models.hf_gpt2_inputs(seed=2))
    counts = program.graph.op_counts()
    assert counts["scaled_dot_product_attention"] == 2 and counts["layer_norm"] == 5
    assert "h.0.attn.c_attn.weight" in program.graph.constants


@pytest.mark.slow
def test_hf_bert_matches_eager() -> None:
    ids, mask = models.hf_bert_inputs(seed=2)
    mask = mask.flip(0)  # pad the other sequence than at import time
    program = _import_and_compare(models.hf_bert(), models.hf_bert_inputs(), (ids, mask))
    assert [v.name for v in program.graph.inputs] == ["input_ids", "attention_mask"]


class CumulativeMax(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values, indices = torch.cummax(self.fc(x), dim=1)
        return values.relu(), indices


def test_source_locations_under_the_working_directory_are_relative(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dumps and module.py name the user's line without the checkout's absolute path."""
    monkeypatch.chdir(Path(__file__).parent.parent)
    program = import_module(models.mlp(), models.mlp_inputs())
    sources = {node.source for node in program.graph.nodes}
    assert sources and all(re.fullmatch(r"testing/models\.py:\d+ in forward", s) for s in sources), sources


def test_unmapped_op_becomes_opaque_with_one_warning() -> None:
    model, x = CumulativeMax().eval(), torch.randn(4, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        program = import_module(model, (x,))
    messages = [str(w.message) for w in caught if "no IR mapping" in str(w.message)]
    assert len(messages) == 1
    assert re.search(r"aten\.cummax\.default at .*test_torch_importer\.py:\d+ in forward", messages[0])
    verify(program.graph)
    (node,) = [n for n in program.graph.nodes if n.op == "opaque"]
    assert node.attrs["target"] == "aten.cummax.default" and len(node.outputs) == 2
    x2 = torch.randn(4, 8)
    values, indices = _run(program, (x2,))
    want_values, want_indices = model(x2)
    _assert_close(values, want_values)
    assert torch.equal(indices, want_indices)


def test_strict_import_names_op_and_location() -> None:
    with pytest.raises(UnsupportedOpError, match=r"aten\.cummax\.default at .*test_torch_importer\.py:\d+"):
        import_module(CumulativeMax().eval(), (torch.randn(4, 8),), strict=True)


def check_aligned(x: torch.Tensor) -> torch.Tensor:
    """An alignment check as kernel wrappers do it: reads the data pointer, which export cannot."""
    if x.data_ptr() % 4:
        raise ValueError("input must be 4-byte aligned")
    return x


torch.fx.wrap("check_aligned")


class AlignedMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(check_aligned(x)).relu()


def test_falls_back_to_symbolic_trace_when_export_fails() -> None:
    model, x = AlignedMLP().eval(), torch.randn(3, 4)
    with pytest.warns(UserWarning, match=r"torch.export failed on AlignedMLP \(RuntimeError: Cannot access data "
                                         r"pointer.*symbolic_trace"):
        program = import_module(model, (x,))
    verify(program.graph)
    assert program.graph.op_counts() == {"linear": 1, "relu": 1}
    assert [v.name for v in program.graph.inputs] == ["x"] and "fc.weight" in program.graph.constants
    x2 = torch.randn(3, 4)
    _assert_close(_run(program, (x2,)), model(x2))


class AlignedRunningSum(nn.Module):
    """Fails torch.export (the alignment check) and updates a buffer, which the fx fallback cannot keep."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("total", torch.zeros(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.total.add_(check_aligned(x))
        return self.total * 2


def test_the_fallback_refuses_buffer_updates_and_leaves_the_buffers_alone() -> None:
    model = AlignedRunningSum()
    with pytest.warns(UserWarning, match="torch.export failed"), \
            pytest.raises(TorchImportError, match=r"updates buffer\(s\) \['total'\] in place"):
        import_module(model, (torch.ones(4),))
    assert torch.equal(model.total, torch.zeros(4))


def test_a_call_must_repeat_the_literals_the_import_specialized_on_with_their_types() -> None:
    model, x, bias = Structured(), torch.randn(2, 3), torch.randn(3)
    program = import_module(model, (x, 2), example_kwargs={"bias": bias})
    with pytest.raises(ValueError, match=r"input 2\.0 differs from 2"):
        program.flatten_inputs((x, 2.0), {"bias": bias})
    with pytest.raises(ValueError, match="input True differs from 1"):
        import_module(model, (x, 1), example_kwargs={"bias": bias}).flatten_inputs((x, True), {"bias": bias})


class Structured(nn.Module):
    """Returns a dict with an input, a parameter, a number and None besides computed tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.randn(3))

    def forward(self, x: torch.Tensor, n: int, *, bias: torch.Tensor) -> dict:
        return {"y": (x * n + bias, x), "scale": self.scale, "n": n, "none": None}


def test_structured_inputs_and_outputs_round_trip() -> None:
    model, x, bias = Structured(), torch.randn(2, 3), torch.randn(3)
    program = import_module(model, (x, 4), example_kwargs={"bias": bias})
    verify(program.graph)
    x2, bias2 = torch.randn(2, 3), torch.randn(3)
    got = _run(program, (x2, 4), {"bias": bias2})
    want = model(x2, 4, bias=bias2)
    assert got.keys() == want.keys() and got["n"] == 4 and got["none"] is None
    _assert_close(got["y"][0], want["y"][0])
    assert torch.equal(got["y"][1], x2) and torch.equal(got["scale"], model.scale.detach())
    with pytest.raises(ValueError, match="specialized on"):
        program.flatten_inputs((x2, 5), {"bias": bias2})


def _mlp_forward(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor) -> tuple:
    return (F.linear(F.gelu(F.linear(x, w1, b1)), w2).softmax(-1),)


def test_import_aten_graph_from_make_fx() -> None:
    inputs = (torch.randn(4, 8), torch.randn(16, 8), torch.randn(16), torch.randn(5, 16))
    gm = make_fx(_mlp_forward)(*inputs)
    program = import_aten_graph(gm, inputs)
    verify(program.graph)
    assert program.graph.op_counts() == {"gelu": 1, "linear": 2, "softmax": 1}
    fresh = tuple(torch.randn_like(t) for t in inputs)
    (got,) = _run(program, fresh)
    _assert_close(got, _mlp_forward(*fresh)[0])


def test_import_aten_graph_from_aot_autograd() -> None:
    from functorch.compile import aot_function

    captured: list[fx.GraphModule] = []

    def capture(gm: fx.GraphModule, _: list) -> fx.GraphModule:
        captured.append(gm)
        return gm

    inputs = (torch.randn(4, 8), torch.randn(16, 8), torch.randn(16), torch.randn(5, 16))
    aot_function(_mlp_forward, fw_compiler=capture)(*inputs)
    program = import_aten_graph(captured[0], inputs)
    verify(program.graph)
    assert "opaque" not in program.graph.op_counts()
    (got,) = _run(program, inputs)
    _assert_close(got, _mlp_forward(*inputs)[0])


def test_import_aten_graph_with_scalar_input() -> None:
    graph = fx.Graph()
    x, s = graph.placeholder("x"), graph.placeholder("s")
    y = graph.call_function(torch.ops.aten.mul.Tensor, (x, s))
    graph.output((graph.call_function(torch.ops.aten.add.Tensor, (y, 1.0)), s))
    program = import_aten_graph(fx.GraphModule({}, graph), (torch.randn(3), 3))
    verify(program.graph)
    assert str(program.graph.inputs[1].type) == "i64[]"
    x2 = torch.randn(3)
    got, scale = _run(program, (x2, 5))
    _assert_close(got, x2 * 5 + 1.0)
    assert scale.item() == 5


def test_import_aten_graph_rejects_symbolic_shapes() -> None:
    gm = make_fx(lambda x: x.relu() * x.shape[0], tracing_mode="symbolic")(torch.randn(4))
    example = [n.meta["val"] for n in gm.graph.nodes if n.op == "placeholder"]
    with pytest.raises(TorchImportError, match="static shapes only"):
        import_aten_graph(gm, example)


def test_getitem_of_split_and_max_dim() -> None:
    class SplitMax(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple:
            a, b = x.split([3, 5], dim=1)
            values, indices = b.max(dim=1)
            return a.sum(0), values, indices

    model, x = SplitMax(), torch.randn(4, 8)
    program = import_module(model, (x,))
    verify(program.graph)
    assert not any(n.op == "opaque" for n in program.graph.nodes)
    got, want = _run(program, (x,)), model(x)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)


def test_scalar_constants_take_the_computation_dtype() -> None:
    class Mixed(nn.Module):
        def forward(self, i: torch.Tensor, h: torch.Tensor) -> tuple:
            return i + 1, i * 0.5, h * 0.5, (i > 2).sum()

    model = Mixed()
    inputs = (torch.arange(6).reshape(2, 3), torch.randn(2, 3).half())
    program = import_module(model, inputs)
    verify(program.graph)
    consts = {str(v.type) for v in program.graph.constants.values()}
    assert consts == {"i64[]", "f32[]", "f16[]"}
    for g, w in zip(_run(program, inputs), model(*inputs), strict=True):
        assert g.dtype == w.dtype and torch.equal(g, w)


def test_imported_graph_has_no_dead_or_identity_nodes() -> None:
    program = import_module(models.gpt2_style(), models.gpt2_style_inputs())
    graph = program.graph
    assert all(any(v.uses or graph.is_output(v) for v in n.outputs) for n in graph.nodes)
    assert not any(n.op == "cast" and n.inputs[0].type == n.outputs[0].type for n in graph.nodes)
    names = [v.name for n in graph.nodes for v in n.outputs]
    assert names == [str(i) for i in range(len(names))]


class ClampsIntegers(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.clamp(x, min=0.5), torch.clamp(x, min=-2, max=3)


def test_an_integer_tensor_clamped_by_float_bounds_becomes_float_as_in_pytorch() -> None:
    x = torch.tensor([-3, 0, 1, 5])
    program = import_module(ClampsIntegers(), (x,))
    got, expected = _run(program, (x,)), ClampsIntegers()(x)
    assert [t.dtype for t in got] == [torch.float32, torch.int64]
    for g, e in zip(got, expected, strict=True):
        assert torch.equal(g, e)


class ScalesHalves(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return x * 70000.0, x / 1e-6, x * 0.1, x.bfloat16() * 1.001, x + 0.1, x * 0.5


def test_16_bit_floats_are_multiplied_and_divided_by_a_python_number_in_float32_as_in_pytorch() -> None:
    x = (torch.rand(64) * 4 - 2).half()
    program = import_module(ScalesHalves(), (x,))
    got, expected = _run(program, (x,)), ScalesHalves()(x)
    assert torch.isfinite(expected[0]).any()
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == e.dtype and torch.equal(g, e)
    exact = [n for n in program.graph.nodes if n.op == "mul" and n.outputs[0].type.dtype == DType.f16]
    assert exact, "x * 0.5 stays a float16 product: 0.5 is exact in float16"


class FillsLargeIntegers(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.full((3,), 2**60 + 1, dtype=torch.int64)


def test_an_int64_fill_above_2_to_the_53_keeps_every_digit() -> None:
    x = torch.arange(3)
    program = import_module(FillsLargeIntegers(), (x,))
    assert torch.equal(_run(program, (x,)), FillsLargeIntegers()(x))
    assert "value=1152921504606846977" in str(program.graph)


@pytest.mark.parametrize("exponent", [0.5, -0.5, -1.0, 2.0, 3.0, -2.0, 1.5, -1.5, 2.5])
def test_pow_by_a_python_number_keeps_pytorchs_results_at_signed_zeros_and_infinities(exponent: float) -> None:
    """PyTorch runs x ** 0.5 as sqrt (sqrt(-inf) is NaN where std::pow gives inf), x ** -0.5 as rsqrt, and so on."""
    class Power(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x ** exponent

    x = torch.tensor([-0.0, 0.0, float("inf"), -float("inf"), float("nan"), -2.0, 2.0, 3.5, -1.0, 1.0])
    got, expected = _run(import_module(Power(), (x,)), (x,)), Power()(x)
    assert torch.equal(got.isnan(), expected.isnan())
    same = ~expected.isnan()
    assert torch.equal(got[same], expected[same]) and torch.equal(got[same].signbit(), expected[same].signbit())


def test_constants_are_copies_of_the_weights_not_the_live_parameters() -> None:
    model, x = models.mlp(), models.mlp_inputs()[0]
    program = import_module(model, (x,))
    before = model(x).detach()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-2.0)  # in place, as load_state_dict does
    _assert_close(_run(program, (x,)), before)
    pointers = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert not any(v.const.untyped_storage().data_ptr() in pointers for v in program.graph.constants.values())


class Inverse(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.inv(x + 4 * torch.eye(4)) * 2


def test_effectful_linalg_op_runs_as_opaque_call_or_is_named_when_strict() -> None:
    model, x = Inverse(), torch.randn(4, 4)
    with pytest.warns(UserWarning, match=r"aten\.linalg_inv_ex\.default at .*test_torch_importer\.py:\d+"):
        program = import_module(model, (x,))
    verify(program.graph)
    x2 = torch.randn(4, 4)
    _assert_close(_run(program, (x2,)), model(x2))
    with pytest.raises(UnsupportedOpError, match=r"aten\.linalg_inv_ex\.default at .*test_torch_importer"):
        import_module(model, (x,), strict=True)


def test_aten_graph_tensor_constant_becomes_a_graph_constant() -> None:
    def f(x: torch.Tensor) -> torch.Tensor:
        return x * torch.tensor([1.0, 2.0, 3.0]) + torch.tensor(0.5)

    x = torch.randn(2, 3)
    gm = make_fx(f)(x)
    assert any(n.op == "get_attr" for n in gm.graph.nodes)
    program = import_aten_graph(gm, [x])
    verify(program.graph)
    x2 = torch.randn(2, 3)
    _assert_close(_run(program, (x2,)), f(x2))


class Pair:
    """Not a registered pytree node: torch.export cannot return it."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor) -> None:
        self.a, self.b = a, b


class ReturnsPair(nn.Module):
    def forward(self, x: torch.Tensor) -> Pair:
        return Pair(x + 1, x * 2)


def test_export_failure_cause_is_in_the_error_when_the_fallback_fails_too() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(TorchImportError, match=r"torch.export failed on ReturnsPair .*Pair.* not a known "
                                                   r"type.*use_cache=False.*fallback failed too"):
            import_module(ReturnsPair(), (torch.randn(3),))


class HalfPowers(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return x ** 0.5, x ** -0.5, x ** 3, x ** -2


def test_float16_pow_keeps_std_pow_as_pytorchs_kernel_does() -> None:
    """PyTorch's sqrt/rsqrt/product shortcuts cover float, double and bfloat16, not float16."""
    x = torch.tensor([-0.0, -float("inf"), 300.0, 1.637, 4.35, -1.9]).half()
    for got, expected in zip(_run(import_module(HalfPowers(), (x,)), (x,)), HalfPowers()(x), strict=True):
        assert torch.equal(got.isnan(), expected.isnan())
        assert torch.equal(got[~expected.isnan()], expected[~expected.isnan()])


class FillsBools(nn.Module):
    def forward(self, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.full_like(b, 0.5), b.new_full((2,), 0.25)


def test_a_fractional_fill_of_a_bool_tensor_is_true() -> None:
    b = torch.tensor([True, False, True])
    for got, expected in zip(_run(import_module(FillsBools(), (b,)), (b,)), FillsBools()(b), strict=True):
        assert torch.equal(got, expected) and bool(expected.all())


def test_any_and_all_over_an_empty_dim_list_reduce_nothing_while_sum_reduces_everything() -> None:
    """PyTorch reads `dim=()` as no dimension for any/all and as every dimension for sum."""

    class EmptyDims(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return torch.any(x, dim=()), torch.all(x, dim=()), torch.sum(x, dim=())

    x = torch.randn(2, 3)
    x[0, 0] = 0.0
    _import_and_compare(EmptyDims(), (x,), (x.flip(0),))


def test_max_and_min_along_a_dim_of_bools_give_pytorchs_indices() -> None:
    """aten.max.dim takes bools; argmax does not, so the indices come from the tensor as u8."""

    class BoolExtremes(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return x.max(0).values, x.max(0).indices, x.min(-1).indices

    x = torch.tensor([[True, False, True], [False, False, True]])
    _import_and_compare(BoolExtremes(), (x,), (~x,))


def test_repeat_becomes_tile_with_leading_dims_added() -> None:
    class Repeats(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return x.repeat(2, 1, 3), x.repeat(2, 1, 1, 2)

    program = _import_and_compare(Repeats(), (torch.randn(4, 5),), (torch.randn(4, 5),))
    assert program.graph.op_counts() == {"tile": 2}


@pytest.mark.parametrize("norm", [nn.InstanceNorm2d(3, affine=True), nn.InstanceNorm1d(3), nn.InstanceNorm3d(3)])
def test_instance_norm_imports_as_reductions_over_its_own_statistics(norm: nn.Module) -> None:
    """InstanceNorm decomposes to a batch norm over the input's own statistics (no running stats)."""
    if isinstance(norm, nn.InstanceNorm2d):
        with torch.no_grad():
            norm.weight.uniform_(0.5, 2.0)
            norm.bias.uniform_(-1.0, 1.0)
    shape = {nn.InstanceNorm1d: (2, 3, 7), nn.InstanceNorm2d: (2, 3, 5, 6), nn.InstanceNorm3d: (2, 3, 3, 4, 5)}
    size = shape[type(norm)]
    program = _import_and_compare(norm.eval(), (torch.randn(size) * 3 + 1,), (torch.randn(size) * 3 + 1,))
    assert "mean" in program.graph.op_counts()


def test_batch_statistics_import_with_the_saved_mean_and_inverse_deviation() -> None:
    """AOTAutograd's graphs also read outputs 1 and 2 of the no-stats batch norm: per channel, mean and rstd."""

    def norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.ops.aten._native_batch_norm_legit.no_stats(x, w, b, True, 0.1, 1e-5)

    inputs = (torch.randn(2, 3, 4, 5) * 2 + 1, torch.rand(3) + 0.5, torch.randn(3))
    program = import_aten_graph(make_fx(norm)(*inputs), inputs)
    assert "opaque" not in program.graph.op_counts()
    for got, want in zip(run_graph(program.graph, *inputs), norm(*inputs), strict=True):
        _assert_close(got, want)


@pytest.mark.parametrize("options", [
    {"scale_factor": 2, "mode": "nearest"}, {"size": (5, 7), "mode": "nearest-exact"},
    {"scale_factor": 2, "mode": "bilinear"}, {"size": (7, 9), "mode": "bilinear", "align_corners": True},
    {"scale_factor": 0.5, "mode": "bilinear", "antialias": True}, {"scale_factor": (1.7, 0.6), "mode": "bicubic"},
    {"scale_factor": 0.3, "mode": "bicubic", "antialias": True}, {"scale_factor": 1.7, "mode": "nearest"},
    {"scale_factor": 1.7, "mode": "bilinear", "recompute_scale_factor": True},
], ids=["nearest", "nearest_exact", "bilinear", "bilinear_align_corners", "bilinear_antialias", "bicubic",
        "bicubic_antialias_shrink", "nearest_fractional", "recomputed_scale"])
def test_interpolation_is_one_interpolate_with_pytorchs_sizes_and_scales(options: dict) -> None:
    class Interpolate(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.interpolate(x, **options)

    program = _import_and_compare(Interpolate(), (torch.randn(2, 3, 6, 8),), (torch.randn(2, 3, 6, 8),))
    assert program.graph.op_counts() == {"interpolate": 1}


@pytest.mark.parametrize("mode, shape", [("linear", (2, 3, 10)), ("trilinear", (1, 2, 3, 4, 5)),
                                         ("nearest", (1, 2, 3, 4, 5)), ("nearest-exact", (2, 3, 10))])
def test_interpolation_of_1d_and_3d_inputs(mode: str, shape: tuple[int, ...]) -> None:
    class Interpolate(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.interpolate(x, scale_factor=2.5, mode=mode)

    _import_and_compare(Interpolate(), (torch.randn(shape),), (torch.randn(shape),))


def test_an_export_whose_ops_all_have_rules_is_lowered_without_decomposing_it(decompositions: list[int]) -> None:
    """Decomposing re-traces the whole program; the rules cover the undecomposed ops of common models."""

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm, self.fc, self.drop = nn.LayerNorm(16), nn.Linear(16, 16), nn.Dropout(0.1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.drop(F.gelu(self.fc(self.norm(x)))).reshape(2, -1, 16)
            return h.to(torch.float64).flatten(1) + x.new_ones(2, 48).double()

    program = _import_and_compare(Block().eval(), (torch.randn(2, 3, 16),), (torch.randn(2, 3, 16),))
    assert not decompositions
    assert program.graph.op_counts()["reshape"] == 1  # the flatten; reshape(2, -1, 16) changes nothing


def test_an_op_without_a_rule_has_the_export_decomposed_into_ops_with_rules(decompositions: list[int]) -> None:
    class Lerp(nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return torch.lerp(x, y, 0.3).relu()

    _import_and_compare(Lerp(), (torch.randn(4, 5), torch.randn(4, 5)), (torch.randn(4, 5), torch.randn(4, 5)))
    assert len(decompositions) == 1


def test_reshape_to_the_same_shape_through_minus_one_is_no_node() -> None:
    class SameShape(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.reshape(2, -1, 4).view(-1, 3, 4) * 2

    program = _import_and_compare(SameShape(), (torch.randn(2, 3, 4),), (torch.randn(2, 3, 4),))
    assert program.graph.op_counts() == {"mul": 1}


def test_diff_with_prepend_append_repeats_and_bools() -> None:
    class Diffs(nn.Module):
        def forward(self, x: torch.Tensor, first: torch.Tensor) -> tuple[torch.Tensor, ...]:
            mask = x > 0
            return (torch.diff(x), torch.diff(x, n=2, dim=0, append=x[:1]), torch.diff(x, prepend=first, dim=-1),
                    torch.diff(mask, dim=1), torch.diff(x, n=0), torch.diff(x[:, :1]))

    def inputs() -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(4, 6), torch.randn(4, 1)

    _import_and_compare(Diffs(), inputs(), inputs())


def test_new_tensors_to_and_logical_operators() -> None:
    class Creation(nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
            a, b = x > 0, y > 0
            return (x.new_zeros(2, 3), x.new_full((3,), 2.5), x.new_ones(4, dtype=torch.int32),
                    a & b, a | b, x.to(torch.float16), x.to("cpu", torch.float64), x.new_empty(0, 2))

    def inputs() -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(3, 4), torch.randn(3, 4)

    _import_and_compare(Creation(), inputs(), inputs())


def test_a_grad_mode_region_in_forward_is_inlined_by_decomposing(decompositions: list[int]) -> None:
    """torch.export keeps `with torch.no_grad():` as a call of a subgraph; decomposing inlines it."""

    class NoGrad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                y = self.fc(x)
            return y.relu() + x

    _import_and_compare(NoGrad(), (torch.randn(2, 4),), (torch.randn(2, 4),))
    assert len(decompositions) == 1


def test_type_as_and_elementwise_max_min() -> None:
    class Mixed(nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return torch.max(x, y), torch.min(x, y), (x > 0).type_as(y), y.type_as(x)

    def inputs() -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(3, 4), torch.randn(4, dtype=torch.float64)

    _import_and_compare(Mixed(), inputs(), inputs())


def test_chunk_into_even_uneven_and_too_many_pieces() -> None:
    class Chunks(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return (*x.chunk(2, dim=1), *x.chunk(3, dim=1), *x.chunk(8, dim=-1), *x.chunk(1))

    _import_and_compare(Chunks(), (torch.randn(2, 6),), (torch.randn(2, 6),))


def test_assignments_into_slices_become_concatenations() -> None:
    """`out[:, 1:] = ...` (slice_scatter), `out[:, 0] = ...` (select_scatter) and copies that broadcast and
    convert, as transformers' shift_tokens_right makes them."""

    class Shift(nn.Module):
        def forward(self, ids: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            shifted = ids.new_zeros(ids.shape)
            shifted[:, 1:] = ids[:, :-1].clone()
            shifted[:, 0] = 7
            out = x * 2
            out[1:3, -2:] = torch.ones(2, dtype=torch.float64)
            out[:, 0] = x[:, 1] + 1
            out[-1] = 3.0
            empty = x * 3
            empty[:, 3:1] = 5.0
            return shifted, out, empty

    def inputs() -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randint(0, 100, (2, 5)), torch.randn(4, 5)

    program = _import_and_compare(Shift(), inputs(), inputs())
    assert "concat" in program.graph.op_counts()


@pytest.mark.parametrize(("start", "end", "step"), [(0, None, 2), (1, None, 3), (1, 6, 4), (-3, None, 2),
                                                     (2, 100, 7), (5, 1, 2)])
def test_strided_slice_scatter_becomes_concatenations(start: int, end: int | None, step: int) -> None:
    """Every step-th element from start replaced: groups of `step` whose first elements change, and a
    last element alone where its group would run past the end."""

    class Strided(nn.Module):
        def forward(self, x: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
            return torch.slice_scatter(x * 2, src, 1, start, end, step)

    count = len(range(*slice(start, end, step).indices(7)))

    def inputs() -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(3, 7, 2), torch.randn(3, count, 2)

    program = _import_and_compare(Strided(), inputs(), inputs())
    assert "opaque" not in program.graph.op_counts()


def test_integer_scalars_out_of_the_tensors_range_wrap_as_in_eager() -> None:
    """`int8_tensor * 1000` multiplies by 1000 wrapped to int8 (-24), and compares and floor-divides by it too;
    true division computes in float32 by the number itself."""

    class Wraps(nn.Module):
        def forward(self, a: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return (a * 1000 + 1, a - 300, a < 1000, a == -24, a // 1000, a % 1000, u * 1000, u - 1000,
                    a / 128, u / 256, (128 - a) / 128, 1000 / (u + 1))  # true division does not wrap

    def inputs() -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.randint(-128, 128, (6,), dtype=torch.int8),
                torch.randint(0, 256, (6,), dtype=torch.uint8))

    _import_and_compare(Wraps(), inputs(), inputs())


class _StridedReads(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = x.transpose(1, 2) + 1.0  # eager keeps the transposed memory order
        n = x.shape[-1]
        windows = x.as_strided((x.shape[0], x.shape[1], n - 2, 3), (*x.stride()[:2], x.stride(2), x.stride(2)))
        return h.as_strided(h.shape, h.stride()) * 1.0, windows * 2, x[:, 1:].as_strided((2, 2), (1, 3))


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_as_strided_reads_the_elements_of_the_traced_layout(backend: str) -> None:
    """as_strided depends on its operand's memory layout, which the IR does not keep: it becomes a gather
    of the elements the traced layout puts at the positions it reads."""
    import heteropass as hp

    program = _import_and_compare(_StridedReads(), (torch.randn(2, 4, 5),), (torch.randn(2, 4, 5),))
    assert "take" in program.graph.op_counts()
    compiled = hp.compile(_StridedReads(), (torch.randn(2, 4, 5),), backends=[backend], strict=True)
    x = torch.randn(2, 4, 5)
    for got, want in zip(compiled(x), _StridedReads()(x), strict=True):
        torch.testing.assert_close(got, want)


def test_var_mean_std_mean_and_flip_lower_whole(decompositions: list[int]) -> None:
    """A timm-style channels-first layer norm (var_mean) and flips: no re-trace, no opaque call."""

    class Moments(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            var, mean = torch.var_mean(x, dim=1, keepdim=True)
            std, mean2 = torch.std_mean(x, dim=(0, 2), correction=0)
            return ((x - mean) / (var + 1e-5).sqrt(), std, mean2, *torch.var_mean(x), torch.flip(x, [-1, 0]),
                    torch.flip(x[0, 0, 0], [0]))

    _import_and_compare(Moments(), (torch.randn(3, 4, 5),), (torch.randn(3, 4, 5),))
    assert not decompositions


@pytest.mark.parametrize("order", [2, 1, 0, 3.5, -1.0, float("inf"), float("-inf")])
def test_vector_norms(order: float) -> None:
    class Norms(nn.Module):
        def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, ...]:
            x = torch.where(x.abs() < 0.3, 0.0, x)  # zeros count for the 0-norm
            return (torch.linalg.vector_norm(x, order), torch.linalg.vector_norm(x, order, dim=1, keepdim=True),
                    torch.linalg.vector_norm(x, order, dim=(0, 2), dtype=torch.float64),
                    torch.linalg.vector_norm(h, order, dim=-1), torch.linalg.vector_norm(x[0, 0, 0], order))

    def inputs() -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(3, 4, 5), (torch.randn(2, 8) * 300).half()

    _import_and_compare(Norms(), inputs(), inputs())


def test_weight_norm_folds_to_a_constant_weight() -> None:
    model = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(8, 4)), nn.ReLU())
    program = _import_and_compare(model, (torch.randn(2, 8),), (torch.randn(2, 8),))
    assert "sqrt" in program.graph.op_counts()
    compiled = hp.compile(model, (torch.randn(2, 8),), opt_level=2)
    assert set(compiled.graph.op_counts()) <= {"linear", "relu", "fused"}, compiled.graph


def test_chunks_of_an_empty_dim_are_empty() -> None:
    class Chunks(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return x.chunk(3, dim=1)

    _import_and_compare(Chunks(), (torch.randn(2, 0),), (torch.randn(2, 0),))


def test_weight_norm_baddbmm_repeat_interleave_and_shape_likes_lower_undecomposed(
        decompositions: list[int]) -> None:
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.utils.weight_norm(nn.Conv1d(4, 6, 3, padding=1), dim=2)
            self.fc = nn.utils.weight_norm(nn.Linear(6, 6), dim=None)

        def forward(self, x: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
            h = self.fc(self.conv(x).mT)
            y = h.detach_() * 2
            return (torch.baddbmm(b, h, h.mT, beta=0.5, alpha=2.0), torch.baddbmm(b * torch.nan, h, h.mT, beta=0),
                    y.repeat_interleave(2, dim=1), y.repeat_interleave(3), y.reshape_as(y.flatten(1)),
                    b.view_as(b.mT.contiguous()), b[:, :1].expand_as(b), y[0].T)

    def inputs() -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(2, 4, 5), torch.randn(2, 5, 5)

    _import_and_compare(Mixed(), inputs(), inputs())
    assert not decompositions


def test_an_export_that_needs_decomposing_copies_the_weights_once(decompositions: list[int],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The ops are checked for rules before the weights are copied into the graph: a large model that needs
    decomposing must not hold two copies of its weights for a moment."""
    from heteropass.ir import torch_importer

    copies: list[int] = []
    original = torch_importer._snapshot
    monkeypatch.setattr(torch_importer, "_snapshot", lambda t: copies.append(1) or original(t))

    class LinearLerp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.lerp(self.fc(x), x, 0.3)

    _import_and_compare(LinearLerp(), (torch.randn(2, 4),), (torch.randn(2, 4),))
    assert len(decompositions) == 1 and len(copies) == 2


def test_weight_norm_of_a_vector_along_its_only_dim_is_each_elements_magnitude() -> None:
    class VectorNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.v, self.g = nn.Parameter(torch.randn(5)), nn.Parameter(torch.randn(5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch._weight_norm(self.v, self.g, 0)

    _import_and_compare(VectorNorm(), (torch.randn(3, 5),), (torch.randn(3, 5),))
