"""In-place ops of an undecomposed export: lowered out of place where that is exact, else decomposed."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from heteropass.ir import run_graph
from heteropass.ir.torch_importer import import_module
from heteropass.ir.torch_inplace import out_of_place

aten = torch.ops.aten


def _compare(model: nn.Module, *inputs: torch.Tensor) -> dict[str, int]:
    """Import `model`, check it against eager on fresh copies of `inputs`; the graph's op counts."""
    program = import_module(model, tuple(x.clone() for x in inputs))
    with torch.no_grad():
        want = model(*(x.clone() for x in inputs))
    got = program.unflatten_outputs(run_graph(program.graph, *program.flatten_inputs(tuple(inputs))))
    want, got = (want, got) if isinstance(want, tuple) else ((want,), (got,))
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    return program.graph.op_counts()


def test_out_of_place_forms() -> None:
    assert out_of_place(aten.add_.Tensor) is aten.add.Tensor
    assert out_of_place(aten.relu_.default) is aten.relu.default
    assert out_of_place(aten.transpose_.default) is None  # transpose is a view
    assert out_of_place(aten.__iand__.Tensor) is None
    assert out_of_place(aten.add.out) is None  # writes `out`, not its first argument
    assert out_of_place(aten.add.Tensor) is None


def test_residual_add_and_inplace_relu_lower_without_decomposing(decompositions: list[int]) -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn, self.relu = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = self.relu(self.bn(self.conv(x)))
            before = out * 3  # reads the tensor before the writes below
            out += x
            doubled = self.relu(out) * 2  # writes `out` again: the second output sees it
            return before, out, doubled

    counts = _compare(Block().eval(), torch.randn(2, 4, 5, 5))
    assert not decompositions
    assert counts == {"conv": 1, "batch_norm": 1, "relu": 2, "mul": 2, "add": 1}


def test_a_write_keeps_the_written_tensors_dtype(decompositions: list[int]) -> None:
    class Mixed(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.full((3, 4), 0.5, dtype=torch.float16)
            h.add_(x)  # computed in float32, stored in float16
            return h

    counts = _compare(Mixed(), torch.randn(3, 4))
    assert not decompositions and counts["cast"] == 1


class _ShiftRight(nn.Module):
    """BART's shift_tokens_right: writes into slices of a tensor made in the graph."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        shifted = ids.new_zeros(ids.shape)
        shifted[:, 1:] = ids[:, :-1].clone()
        shifted[:, 0] = 2
        shifted.masked_fill_(shifted == -100, 1)
        return shifted * 3


class _UpdateInSlices(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y = x * 2
        y[:, 1:3] += 1  # reads the slice, writes it back through a second slice of the same part
        y[0, :, 1] = x[0, :, 0]  # select, then slice, then select
        first = y[:, 0].clone()  # made and read between writes
        doubled = y[1].mul_(-1) * 2  # the write's result is the view it wrote
        y[:, ::2, 1:] *= 3
        y[..., -1:].clamp_(min=0)
        y[2, 1:].fill_(0.5)
        return y, first, doubled


def test_writes_into_slices_lower_as_scatters(decompositions: list[int]) -> None:
    counts = _compare(_ShiftRight(), torch.randint(-100, 50, (3, 7)))
    assert "where" in counts and "opaque" not in counts
    _compare(_UpdateInSlices(), torch.randn(3, 4, 5))
    assert not decompositions


class _ViewReadAfterWrite(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(x * 2)
        flat = out.view(-1)
        out.add_(1)  # `flat` sees this
        return flat


class _SliceReadAfterWriteIntoSlice(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x * 2
        first = out[:, 0]
        out[:, 0] += 1  # `first` sees this
        return first * 3


class _WriteThroughAWritesResult(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * 2
        z = y[:, 1:].mul_(2)  # z views y
        z[:, 1:] = 0
        return y


class _WriteIntoInput(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.mul_(2)
        return x + 1


@pytest.mark.parametrize("model", [_ViewReadAfterWrite(), _SliceReadAfterWriteIntoSlice(), _WriteIntoInput(),
                                   _WriteThroughAWritesResult()],
                         ids=["view_read_after", "slice_read_after", "into_input", "through_a_writes_result"])
def test_writes_that_views_or_inputs_see_are_decomposed(model: nn.Module, decompositions: list[int]) -> None:
    _compare(model, torch.randn(3, 4))
    assert len(decompositions) == 1


class _SourceOverlapsTarget(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x * 2
        out.add_(out[:, :1])  # eager reads column 0 as it writes it
        return out


def test_a_write_reading_part_of_what_it_writes_is_decomposed() -> None:
    program = import_module(_SourceOverlapsTarget(), (torch.randn(3, 4),))
    assert program.route.startswith("torch.export, decomposed first (aten.add_.Tensor writes mul")


class _WriteThroughTypeAs(nn.Module):
    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        y = x @ w
        first = y[:, 0]
        y.type_as(w).mul_(2)  # type_as returns y itself: `first` sees the write
        return first


def test_a_write_into_what_type_as_returned_is_decomposed(decompositions: list[int]) -> None:
    """aten.type_as's schema promises a new tensor, but it returns its input when the dtypes match."""
    _compare(_WriteThroughTypeAs(), torch.randn(3, 4), torch.randn(4, 5))
    assert len(decompositions) == 1


_SHAPE = (4, 5, 6)


@st.composite
def _index(draw: st.DrawFn) -> tuple:
    """`y[index]` as a slice or select of one dim, or a select then a slice."""
    dim = draw(st.integers(0, 2))
    size = _SHAPE[dim]
    index: list = [slice(None)] * 3
    if draw(st.booleans()):
        start = draw(st.integers(-size, size - 1))
        index[dim] = slice(start, draw(st.integers(start % size + 1, size)), draw(st.integers(1, 3)))
    else:
        index[dim] = draw(st.integers(-size, size - 1))
    if draw(st.booleans()):
        other = (dim + 1) % 3
        index[other] = slice(draw(st.integers(0, _SHAPE[other] - 1)), None)
    return tuple(index)


_STEP = st.one_of(
    st.tuples(st.just("write"), _index(), st.sampled_from(["add_", "mul_", "fill_", "clamp_", "assign"]),
              st.floats(-2, 2, width=32)),
    st.tuples(st.just("view"), _index()),  # read at the end: a write in between sees it decomposed
    st.tuples(st.just("read"), _index()))  # read at once


class _Steps(nn.Module):
    def __init__(self, steps: list[tuple]) -> None:
        super().__init__()
        self.steps = steps

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y = x * 2 + 1
        outs, views = [], []
        for kind, index, *rest in self.steps:
            if kind == "view":
                views.append(y[index])
            elif kind == "read":
                outs.append(y[index] * 3)
            elif rest[0] == "assign":
                y[index] = x[index] * rest[1]
            elif rest[0] == "clamp_":
                y[index].clamp_(min=rest[1])
            else:
                getattr(y[index], rest[0])(rest[1])
        return (y, *outs, *(v * 1 for v in views))


@settings(max_examples=15)
@given(steps=st.lists(_STEP, min_size=1, max_size=6))
def test_random_writes_into_slices_match_eager(steps: list[tuple]) -> None:
    """Whichever route the import takes (lowered as exported, or decomposed first), it matches eager."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _compare(_Steps(steps), torch.randn(*_SHAPE))
