"""In-place ops of an undecomposed export: lowered out of place where that is exact, else decomposed."""

from __future__ import annotations

import pytest
import torch
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


class _WriteThroughView(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(x * 2)
        flat = out.view(-1)
        out.add_(1)  # `flat` sees this
        return flat


class _WriteIntoInput(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.mul_(2)
        return x + 1


class _WriteIntoView(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x * 2
        out[:, 1:].add_(1)
        return out


@pytest.mark.parametrize("model", [_WriteThroughView(), _WriteIntoInput(), _WriteIntoView()],
                         ids=["through_view", "into_input", "into_view"])
def test_writes_that_views_or_inputs_see_are_decomposed(model: nn.Module, decompositions: list[int]) -> None:
    _compare(model, torch.randn(3, 4))
    assert len(decompositions) == 1


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
