"""`heteropass.compile` end to end on real architectures, dumps, and bad input."""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.utils._pytree import tree_leaves

import heteropass as hp
from heteropass.api import CompileOptions, _elements_overlap
from heteropass.backends.executable import InputError
from heteropass.backends.numba_backend import NumbaBackend
from heteropass.ir.torch_importer import UnsupportedOpError
from heteropass.testing import models

MODELS: dict[str, tuple[Callable[[], torch.nn.Module], Callable[..., tuple]]] = {
    "mlp": (models.mlp, models.mlp_inputs),
    "resnet": (models.resnet_cnn, models.resnet_inputs),
    "gpt2_style": (models.gpt2_style, models.gpt2_style_inputs),
    "gpt2_style_sdpa": (lambda: models.gpt2_style(use_sdpa=True), models.gpt2_style_inputs),
}


def assert_close_to_eager(actual: Any, expected: Any, rtol: float = 1e-5) -> None:
    for a, e in zip(tree_leaves(actual), tree_leaves(expected), strict=True):
        if isinstance(e, torch.Tensor):
            assert a.shape == e.shape and a.dtype == e.dtype
            scale = e.abs().max().clamp_min(1e-12) if e.numel() else 1.0
            assert ((a - e).abs().max() / scale if e.numel() else 0.0) <= rtol
        else:
            assert a == e


@pytest.mark.parametrize("opt_level", [0, 2])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_match_eager(name: str, opt_level: int) -> None:
    make, inputs = MODELS[name]
    model = make()
    cm = hp.compile(model, inputs(), opt_level=opt_level)
    fresh = inputs(seed=7)
    with torch.no_grad():
        assert_close_to_eager(cm(*fresh), model(*fresh))
    assert not any(n.op == "opaque" for n in cm.graph.nodes)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["hf_gpt2", "hf_bert"])
def test_transformers_match_eager(name: str) -> None:
    model, inputs = getattr(models, name)(), getattr(models, f"{name}_inputs")
    cm = hp.compile(model, inputs(), opt_level=2)
    fresh = inputs(seed=3)
    with torch.no_grad():
        assert_close_to_eager(cm(*fresh), model(*fresh))
    assert not any(n.op == "opaque" for n in cm.graph.nodes)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_torch_compile_backend(name: str) -> None:
    torch._dynamo.reset()
    make, inputs = MODELS[name]
    model = make()
    compiled = torch.compile(model, backend="heteropass", dynamic=False)
    with torch.no_grad():
        for seed in (1, 2):
            assert_close_to_eager(compiled(*inputs(seed=seed)), model(*inputs(seed=seed)))


class WithGraphBreak(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = torch.nn.Linear(8, 8), torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.first(x))
        torch._dynamo.graph_break()
        return torch.softmax(self.second(y), -1)


def test_torch_compile_graph_break_compiles_each_graph(tmp_path: Any) -> None:
    torch._dynamo.reset()
    model = WithGraphBreak().eval()
    compiled = torch.compile(model, backend="heteropass", dynamic=False, options={"dump_dir": str(tmp_path)})
    x = torch.randn(3, 8)
    with torch.no_grad():
        assert_close_to_eager(compiled(x), model(x))
    graphs = sorted(p.name for p in tmp_path.iterdir())
    assert graphs == ["graph_000", "graph_001"]
    for graph in graphs:
        assert (tmp_path / graph / "summary.json").exists() and (tmp_path / graph / "module.py").exists()


def test_torch_compile_rejects_unknown_option() -> None:
    torch._dynamo.reset()
    compiled = torch.compile(models.mlp(), backend="heteropass", options={"opt_lvl": 2})
    with pytest.raises(Exception, match="unknown heteropass option"):
        compiled(*models.mlp_inputs())


def test_dump_dir_has_one_file_per_pass_summary_and_module(tmp_path: Any) -> None:
    cm = hp.compile(models.gpt2_style(), models.gpt2_style_inputs(), opt_level=2, dump_dir=str(tmp_path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    ir_files = sorted(p.name for p in tmp_path.glob("[0-9][0-9][0-9]_*.ir"))
    assert ir_files[0] == "000_input.ir"
    assert len(ir_files) == len(summary["passes"]) + 1
    last = (tmp_path / ir_files[-1]).read_text()
    assert last.splitlines()[0].startswith(f"# after {summary['passes'][-1]['name']}")
    assert str(cm.graph).replace("@cpu", "").replace(" ", "") == last.split("\n", 1)[1].replace(" ", "")
    assert str(cm.graph) in (tmp_path / "placed.ir").read_text()
    assert (tmp_path / "module.py").read_text() == cm.code
    assert cm.code.startswith("def forward(idx):")
    assert "propagate-shapes" in cm.report


def test_dump_dir_from_environment(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HETEROPASS_DUMP_DIR", str(tmp_path))
    hp.compile(models.mlp(), models.mlp_inputs(), opt_level=1)
    assert (tmp_path / "summary.json").exists()


def test_disabled_pass_does_not_run() -> None:
    cm = hp.compile(models.mlp(), models.mlp_inputs(), disable=["fold-constants"])
    assert "fold-constants" not in cm.report and "simplify-algebra" in cm.report


@pytest.mark.parametrize(("args", "message"), [
    ((torch.randn(8, 32),), r"input 0 'x' expects f32\[8,64\], got f32\[8,32\]"),
    ((torch.randn(8, 64, dtype=torch.float64),), r"input 0 'x' expects f32\[8,64\], got f64\[8,64\]"),
    ((torch.randn(8, 64), torch.randn(8, 64)), r"expected 1 positional argument\(s\).*got 2 positional"),
    (([1.0] * 64,), "argument 0 should be a tensor or scalar, got list"),
])
def test_wrong_inputs_raise_clear_errors(args: tuple, message: str) -> None:
    cm = hp.compile(models.mlp(), models.mlp_inputs())
    with pytest.raises((InputError, ValueError, TypeError), match=message):
        cm(*args)


class UsesCummax(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cummax(x, dim=1).values * 2


def test_unsupported_op_falls_back_with_warning_or_fails_when_strict() -> None:
    x = torch.randn(3, 5)
    with pytest.warns(UserWarning, match="aten.cummax"):
        cm = hp.compile(UsesCummax(), (x,))
    assert_close_to_eager(cm(x), UsesCummax()(x))
    with pytest.raises(UnsupportedOpError, match=r"aten\.cummax"):
        hp.compile(UsesCummax(), (x,), strict=True)


class ReturnsCopies(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(4))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return x.clone(), x * 1, x + 0, self.w * 2


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_outputs_are_fresh_tensors_as_in_eager(backend: str) -> None:
    """clone(), x * 1 and x + 0 reduce to x, and w * 2 to a constant: each is still returned as a new tensor."""
    model, x = ReturnsCopies(), torch.randn(4)
    x_before = x.clone()
    cm = hp.compile(model, (x,), backends=[backend])
    first = cm(x)
    assert len({out.data_ptr() for out in [x, *first]}) == 5
    for out in first:
        out.zero_()
    torch.testing.assert_close(x, x_before)
    with torch.no_grad():
        assert_close_to_eager(cm(x), model(x))


class ReturnsCopiesOfViews(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (x.reshape(-1).clone(), x.transpose(0, 1) * 1, x[1:].clone(), x.unbind(0)[0].clone(),
                torch.cat(x.chunk(1, dim=1), dim=1))


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_outputs_that_reduce_to_views_of_an_input_are_fresh_tensors(backend: str) -> None:
    """The passes reduce each of these to a view of x (a reshape, transpose, slice, one-piece split); the
    caller reusing its input buffer must not change them."""
    model, x = ReturnsCopiesOfViews(), torch.randn(3, 4)
    cm = hp.compile(model, (x,), backends=[backend])
    x = torch.randn(3, 4)
    want, got = model(x), cm(x)
    x.zero_()
    assert_close_to_eager(got, want)


class ReturnsContiguousViews(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y = x * 2
        return y[:, :1].expand(3, 2, 4).contiguous(), (y + 1).permute(0, 2, 1).contiguous(), y[:, ::2].clone()


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_outputs_that_are_views_of_intermediates_are_contiguous(backend: str) -> None:
    """The importer drops `.contiguous()` and `.clone()`: the outputs, views of `y`, are still returned as
    contiguous tensors, so `.view` works on them and writing one element of the expand changes only it."""
    model, x = ReturnsContiguousViews(), torch.randn(3, 2, 4)
    expanded, permuted, strided = hp.compile(model, (x,), backends=[backend])(x)
    assert expanded.is_contiguous() and permuted.is_contiguous() and strided.is_contiguous()
    expanded[:, 0, 0] = 100.0
    assert int((expanded == 100.0).sum()) == 3
    assert_close_to_eager(permuted.view(3, -1), model(x)[1].view(3, -1))


class ReturnsViewsOfAnOutput(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = x * 2
        return h, h.t(), h[1]


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_outputs_that_view_another_output_share_its_memory_as_in_eager(backend: str) -> None:
    h, transposed, row = hp.compile(ReturnsViewsOfAnOutput(), (torch.randn(3, 4),), backends=[backend])(
        torch.randn(3, 4))
    h.add_(100.0)
    assert torch.equal(transposed, h.t()) and torch.equal(row, h[1])


class ReturnsCopiesOfOpaqueViews(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(4, 4))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return x.diagonal() * 1, x.clone().unfold(1, 2, 2), self.w.diagonal() * 1


@pytest.mark.parametrize("backend", ["reference", "numba"])
@pytest.mark.filterwarnings("ignore:.*opaque PyTorch calls")
def test_outputs_that_reduce_to_opaque_views_of_an_input_or_weight_are_fresh_tensors(backend: str) -> None:
    """diagonal and unfold run as PyTorch calls whose results view their operand."""
    model = ReturnsCopiesOfOpaqueViews()
    cm = hp.compile(model, (torch.randn(4, 4),), backends=[backend])
    x = torch.randn(4, 4)
    x_before = x.clone()
    for out in cm(x):
        out.add_(100.0)
    torch.testing.assert_close(x, x_before)
    with torch.no_grad():
        assert_close_to_eager(cm(x), model(x))


class RunningSum(torch.nn.Module):
    """Updates a buffer in place, as a running statistic or a step counter does."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("total", torch.zeros(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.total.add_(x)
        return self.total * 2


class WritesCache(torch.nn.Module):
    """Writes each call's key into a cache buffer at a given position and attends over the cache."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("cache", torch.zeros(6, 4))

    def forward(self, key: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        self.cache.copy_(torch.where(torch.arange(6)[:, None] == position, key, self.cache))
        return torch.softmax(self.cache @ key[0], dim=0)


class ScalesItsInput(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.mul_(2)
        return x + 1


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_in_place_updates_of_buffers_and_inputs_persist_as_in_eager(backend: str) -> None:
    eager, compiled_model = RunningSum(), RunningSum()
    cm = hp.compile(compiled_model, (torch.ones(4),), backends=[backend])
    assert [v.name for v in cm.graph.inputs] == ["x", "total"]
    for _ in range(3):
        x = torch.randn(4)
        torch.testing.assert_close(cm(x), eager(x))
    torch.testing.assert_close(compiled_model.total, eager.total)

    eager, compiled_model = WritesCache(), WritesCache()
    cm = hp.compile(compiled_model, (torch.randn(1, 4), torch.tensor([0])), backends=[backend])
    for step in range(4):
        key = torch.randn(1, 4)
        torch.testing.assert_close(cm(key, torch.tensor([step])), eager(key, torch.tensor([step])))
    torch.testing.assert_close(compiled_model.cache, eager.cache)

    torch.manual_seed(0)
    eager_embedding = torch.nn.Embedding(10, 4, max_norm=1.0)  # renormalizes the rows it looks up, in place
    compiled_embedding = torch.nn.Embedding(10, 4, max_norm=1.0)
    compiled_embedding.load_state_dict(eager_embedding.state_dict())
    ids = torch.tensor([1, 3, 3])
    with pytest.warns(UserWarning, match="embedding_renorm"):  # runs as an opaque PyTorch call
        cm = hp.compile(compiled_embedding, (ids,), backends=[backend])
    for ids in (torch.tensor([1, 3, 3]), torch.tensor([0, 7, 1])):
        torch.testing.assert_close(cm(ids), eager_embedding(ids).detach())
    torch.testing.assert_close(compiled_embedding.weight.detach(), eager_embedding.weight.detach())

    x = torch.randn(3)
    x_eager = x.clone()
    cm = hp.compile(ScalesItsInput(), (x.clone(),), backends=[backend])
    torch.testing.assert_close(cm(x), ScalesItsInput()(x_eager))
    torch.testing.assert_close(x, x_eager)


def test_check_each_and_verify_each_pass_on_a_transformer() -> None:
    cm = hp.compile(models.gpt2_style(), models.gpt2_style_inputs(), check_each=True, verify_each=True)
    drifts = [r.stats.get("drift", 0.0) for r in cm.pipeline.records]
    assert drifts and max(drifts) <= 1e-5


def test_numba_backend_by_name_claims_compute() -> None:
    model, inputs = models.mlp(), models.mlp_inputs()
    cm = hp.compile(model, inputs, backends=["numba"])
    with torch.no_grad():
        assert_close_to_eager(cm(*models.mlp_inputs(seed=5)), model(*models.mlp_inputs(seed=5)), rtol=1e-4)
    assert {p.backend.name for p in cm.executable.partitions} == {"numba"}
    assert any(call in cm.code for call in ("_linear_pointwise", "torch.addmm", "torch.mm", "onnxruntime Gemm"))
    with pytest.raises(ValueError, match="unknown backend 'tvm'"):
        hp.compile(model, inputs, backends=["tvm"])
    one = hp.compile(model, inputs, backends="numba", disable="fold-constants")  # one name alone, not its letters
    assert {p.backend.name for p in one.executable.partitions} == {"numba"}
    assert "fold-constants" not in [r.name for r in one.pipeline.records]
    assert CompileOptions(backends="numba", disable="fold-constants").backends == ("numba",)
    backend = NumbaBackend()
    assert CompileOptions(backends=backend).backends == (backend,)


def test_dump_onnx_writes_a_model_after_every_pass(tmp_path: Any) -> None:
    import onnx
    import onnxruntime as ort

    model, inputs = models.gpt2_style(), models.gpt2_style_inputs()
    cm = hp.compile(model, inputs, dump_dir=str(tmp_path), dump_onnx=True)
    ir_files = sorted(p.stem for p in tmp_path.glob("[0-9][0-9][0-9]_*.ir"))
    onnx_files = sorted(p.stem for p in tmp_path.glob("[0-9][0-9][0-9]_*.onnx"))
    assert onnx_files == ir_files
    last = onnx.load(str(tmp_path / f"{onnx_files[-1]}.onnx"))
    onnx.checker.check_model(last, full_check=True)
    assert any(f.domain == "heteropass" for f in last.functions)  # fused regions as local functions
    session = ort.InferenceSession(last.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: inputs[0].numpy()})
    with torch.no_grad():
        assert_close_to_eager(torch.from_numpy(got), cm(*inputs))


def test_dump_onnx_explains_graphs_onnx_cannot_express(tmp_path: Any) -> None:
    x = torch.randn(3, 5)
    with pytest.warns(UserWarning, match=r"aten\.cummax"):
        hp.compile(UsesCummax(), (x,), dump_dir=str(tmp_path), dump_onnx=True)
    reason = (tmp_path / "000_input.onnx.txt").read_text()
    assert reason.startswith("not exported:") and "opaque" in reason


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_weights_are_a_snapshot_taken_at_compile_time(backend: str) -> None:
    model, other, (x,) = models.mlp(seed=0), models.mlp(seed=1), models.mlp_inputs()
    with torch.no_grad():
        before = model(x)
    cm = hp.compile(model, (x,), backends=[backend])
    model.load_state_dict(other.state_dict())  # copies into the live parameters
    assert_close_to_eager(cm(x), before)


class _BmmTanh(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.tanh(torch.bmm(a, b)) * 2 + torch.bmm(a, b).sum(-1, keepdim=True)


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_a_first_call_under_inference_mode_makes_buffers_later_calls_can_write(backend: str) -> None:
    """A warm-up request under inference mode makes the buffers (and views of them) that later calls out
    of it write into, with PyTorch out= products among others."""
    model, inputs = _BmmTanh(), (torch.randn(4, 16, 32), torch.randn(4, 32, 16))
    compiled = hp.compile(model, inputs, backends=(backend, "reference"))
    with torch.inference_mode():
        compiled(*inputs)
    torch.testing.assert_close(compiled(*inputs), model(*inputs))


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_a_model_made_and_compiled_under_inference_mode(backend: str) -> None:
    """Its weights are inference tensors, which keep no version counter."""
    with torch.inference_mode():
        model, inputs = _BmmTanh(), (torch.randn(4, 16, 32), torch.randn(4, 32, 16))
        compiled = hp.compile(model, inputs, backends=(backend, "reference"))
        torch.testing.assert_close(compiled(*inputs), model(*inputs))
    torch.testing.assert_close(compiled(*inputs), model(*inputs))


def test_outputs_do_not_require_grad_and_a_grad_input_warns_once() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)).eval()
    cm = hp.compile(model, (torch.randn(3, 8),))
    x = torch.randn(3, 8, requires_grad=True)
    with pytest.warns(UserWarning, match="inference module.*torch.compile"):
        out = cm(x)
    assert not out.requires_grad
    with torch.no_grad():
        assert_close_to_eager(out, model(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not cm(x).requires_grad


class QueryKeyValue(torch.nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v - q


def test_one_example_tensor_passed_for_several_inputs_compiles_them_as_distinct() -> None:
    """torch.export gives `model(x, x, x)` one placeholder; compiled on such examples, the module must still
    read each input it is called with."""
    x = torch.randn(2, 5, 4)
    cm = hp.compile(QueryKeyValue(), (x, x, x))
    q, k, v = torch.randn(2, 5, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    assert_close_to_eager(cm(q, k, v), QueryKeyValue()(q, k, v))


class UpdatesFirstReadsSecond(torch.nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x.add_(1.0)
        return y * 2


def test_an_input_updated_in_place_must_not_alias_another_input() -> None:
    cm = hp.compile(UpdatesFirstReadsSecond(), (torch.randn(4), torch.randn(4)))
    t = torch.randn(4)
    with pytest.raises(ValueError, match="input 0 'x', which the model updates in place, shares memory with "
                                         "input 1 'y'"):
        cm(t, t)
    a, b = torch.randn(4), torch.randn(4)
    a_eager, b_eager = a.clone(), b.clone()
    assert_close_to_eager(cm(a, b), UpdatesFirstReadsSecond()(a_eager, b_eager))
    torch.testing.assert_close(a, a_eager)
    packed = torch.randn(2, 4)  # the two halves of one packed cache do not overlap
    packed_eager = packed.clone()
    assert_close_to_eager(cm(packed[0], packed[1]), UpdatesFirstReadsSecond()(packed_eager[0], packed_eager[1]))
    torch.testing.assert_close(packed, packed_eager)
    interleaved = torch.randn(4, 2)  # the columns' byte ranges cross, their elements do not
    interleaved_eager = interleaved.clone()
    assert_close_to_eager(cm(interleaved[:, 0], interleaved[:, 1]),
                          UpdatesFirstReadsSecond()(interleaved_eager[:, 0], interleaved_eager[:, 1]))
    torch.testing.assert_close(interleaved, interleaved_eager)
    overlapping = torch.randn(5)
    with pytest.raises(ValueError, match="shares memory"):
        cm(overlapping[:4], overlapping[1:])

    storage = torch.randn(8, dtype=torch.float64)
    wide, narrow = storage[::2], storage.view(torch.float32)
    assert not _elements_overlap(wide, narrow[2::4]) and not _elements_overlap(narrow[2::4], wide)
    assert _elements_overlap(wide, narrow[1::4]) and _elements_overlap(narrow[1::4], wide)
    cache = torch.randn(3, 4, 2, 5)  # the halves interleave in runs of 5 contiguous elements
    assert not _elements_overlap(cache[:, :, 0], cache[:, :, 1])
    assert _elements_overlap(cache[:, :, 0], cache[:, 1:, 0, 4:]) and _elements_overlap(cache[1], cache[:, 2, 1, 3])
    assert not _elements_overlap(cache[:, :, 0, :2], cache[:, :, 0, 2:])


def test_training_mode_is_compiled_in_warned_and_checked_at_call_time() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU()).train()
    with pytest.warns(UserWarning, match="in training mode: BatchNorm1d.*model.eval"):
        cm = hp.compile(model, (torch.randn(4, 8),))
    x = torch.randn(4, 8) * 3 + 1
    reference = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU())
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert_close_to_eager(cm(x), reference.train()(x))
    model.eval()
    with pytest.raises(RuntimeError, match="BatchNorm1d was in training mode when compiled and is in eval mode"):
        cm(x)
    eval_cm = hp.compile(model, (x,))
    with torch.no_grad():
        assert_close_to_eager(eval_cm(x), model(x))


class FakeQuantizedLinear(torch.nn.Module):
    """What quantization-aware training leaves in a model: an op without a Meta kernel."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.fake_quantize_per_tensor_affine(x, 0.05, 128, 0, 255))


def test_an_op_without_a_meta_kernel_falls_back_to_pytorch() -> None:
    model, x = FakeQuantizedLinear().eval(), torch.randn(2, 8)
    with pytest.warns(UserWarning, match="fake_quantize_per_tensor_affine"):
        compiled = hp.compile(model, (x,))
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-6, atol=1e-6)


class TwoRowEmbedding(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table = torch.nn.Embedding(2, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.table(ids) * 2)


def test_check_each_runs_on_the_example_inputs() -> None:
    """Random ids lie in [0, 4), out of range for BERT's 2-row token type table; the example's are not."""
    model, ids = TwoRowEmbedding().eval(), torch.tensor([[0, 1, 1]])
    compiled = hp.compile(model, (ids,), check_each=True)
    assert all(r.stats["drift"] == 0.0 for r in compiled.pipeline.records)
    torch.testing.assert_close(compiled(ids), model(ids))


class WritesWhatAViewReads(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * 2
        first = y[:, 0]
        y[:, 0] = 1  # `first` sees this
        return first * 3


def test_the_report_says_how_the_model_was_imported() -> None:
    x = torch.randn(3, 4)
    plain = hp.compile(torch.nn.Linear(4, 2), (x,))
    assert plain.report.startswith("import: torch.export, lowered as exported, ")
    sliced = hp.compile(WritesWhatAViewReads(), (x,))
    assert re.match(r"import: torch\.export, decomposed first \(aten\.fill_\.Tensor writes mul, which the view "
                    r"select\w* made before it reads after it\), \d+ ms\n", sliced.report), sliced.report
    torch.testing.assert_close(sliced(x), WritesWhatAViewReads()(x))
