"""Differential assertions: a pass or a backend must compute what the reference interpreter computes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import torch

from ..backends.base import Backend
from ..backends.executable import build_executable
from ..ir import Graph, VerificationError, format_graph, run_graph, verify
from ..ir.sample import random_inputs
from ..passes import Fixpoint, Pass, PassContext, PassManager


def assert_outputs_close(actual: Sequence[torch.Tensor], expected: Sequence[torch.Tensor], rtol: float = 1e-5,
                         atol: float = 1e-6, context: str = "") -> None:
    """Raise AssertionError unless both lists hold tensors of equal dtype and shape and close values.

    Floats compare with `|a - e| <= atol + rtol * |e|`, NaN positions equal and infinities exact;
    integers and bools compare exactly. `context` is appended to the message.
    """
    problems = []
    if len(actual) != len(expected):
        problems.append(f"{len(actual)} outputs, expected {len(expected)}")
    for i, (a, e) in enumerate(zip(actual, expected, strict=False)):
        problem = _difference(a, e, rtol, atol)
        if problem is not None:
            problems.append(f"output {i}: {problem}")
    if problems:
        raise AssertionError("\n".join(problems) + (f"\n\n{context}" if context else ""))


def _difference(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> str | None:
    if not isinstance(actual, torch.Tensor):
        return f"got {type(actual).__qualname__}, expected a tensor"
    if actual.dtype != expected.dtype or actual.shape != expected.shape:
        return (f"got {actual.dtype}{list(actual.shape)}, expected {expected.dtype}{list(expected.shape)}")
    if actual.device != expected.device:
        actual = actual.to(expected.device)
    if not expected.is_floating_point():
        wrong = actual != expected
    else:
        # In float64 so that rounding in the comparison itself cannot hide or invent a difference.
        a, e = actual.double(), expected.double()
        wrong = ~(torch.isclose(a, e, rtol=rtol, atol=atol) | (a.isnan() & e.isnan()))
    count = int(wrong.sum())
    if count == 0:
        return None
    first = tuple(int(i) for i in wrong.nonzero()[0])
    text = (f"{count} of {expected.numel()} elements differ ({expected.dtype}{list(expected.shape)}); "
            f"first at {list(first)}: got {actual[first].item()}, expected {expected[first].item()}")
    if expected.is_floating_point():
        finite = wrong & a.isfinite() & e.isfinite()
        if finite.any():
            text += f"; max abs error {float((a - e).abs()[finite].max()):.3g} (rtol={rtol}, atol={atol})"
    return text


def _run(graph: Graph, inputs: Sequence[torch.Tensor], what: str) -> list[torch.Tensor]:
    try:
        return run_graph(graph, *inputs)
    except Exception as exc:
        raise AssertionError(f"the reference interpreter failed on the {what}: {exc}\n\n{format_graph(graph)}") from exc


def assert_pass_preserves_semantics(pass_: Pass | Fixpoint | Sequence[Pass | Fixpoint], graph: Graph,
                                    inputs: Sequence[torch.Tensor] | None = None, *, rtol: float = 1e-5,
                                    atol: float = 1e-6, ctx: PassContext | None = None) -> Graph:
    """Run `pass_` (a pass, or a pipeline through `PassManager`) on a clone of `graph` and raise
    AssertionError, showing the graph before and after, unless the result verifies, keeps the
    signature and computes the same outputs as `graph` on `inputs` (default: random inputs).

    Also checks that a pass reporting no change printed the same and that the pass did not write
    into tensors it shares with the original graph. Returns the transformed graph.
    """
    ctx = ctx or PassContext()
    inputs = list(inputs) if inputs is not None else random_inputs(graph)
    before = format_graph(graph)
    expected = _run(graph, inputs, "graph before the pass")
    work = graph.clone()
    if isinstance(pass_, Pass):
        name = pass_.name
        result = pass_(work, ctx)
        after_graph = result.graph
        if not result.modified and format_graph(after_graph) != before:
            raise AssertionError(f"pass {name} reported modified=False but changed the graph\n\n"
                                 f"--- before\n{before}--- after\n{format_graph(after_graph)}")
    else:
        items = [pass_] if isinstance(pass_, Fixpoint) else list(pass_)
        name = "pipeline [" + ", ".join(_describe(item) for item in items) + "]"
        after_graph = PassManager(items, ctx).run(work).graph
    after = format_graph(after_graph)
    context = f"--- before {name}\n{before}--- after {name}\n{after}"
    try:
        verify(after_graph)
    except VerificationError as exc:
        raise AssertionError(f"{name} produced an invalid graph: {exc}\n\n{context}") from None
    signature = ([v.type for v in graph.inputs], [v.type for v in graph.outputs])
    if ([v.type for v in after_graph.inputs], [v.type for v in after_graph.outputs]) != signature:
        raise AssertionError(f"{name} changed the graph's signature\n\n{context}")
    actual = _run(after_graph, inputs, f"graph after {name}")
    assert_outputs_close(actual, expected, rtol, atol, f"{name} changed the results\n\n{context}")
    assert_outputs_close(_run(graph, inputs, "original graph"), expected, 0.0, 0.0,
                         f"{name} wrote into constant tensors of the original graph\n\n{context}")
    return after_graph


def _describe(item: Pass | Fixpoint) -> str:
    if isinstance(item, Fixpoint):
        return f"{item.name}(" + ", ".join(_describe(p) for p in item.passes) + ")"
    return item.name


def assert_backend_matches_reference(graph: Graph, backends: Sequence[Backend] | None = None,
                                     inputs: Sequence[torch.Tensor] | None = None, *, rtol: float = 1e-4,
                                     atol: float = 1e-5) -> None:
    """Compile a clone of `graph` with `build_executable(graph, backends)` and raise AssertionError,
    showing the graph and the emitted code, unless it computes what the reference interpreter does."""
    inputs = list(inputs) if inputs is not None else random_inputs(graph)
    expected = _run(graph, inputs, "graph")
    work = graph.clone()
    executable = build_executable(work, backends)
    context = f"--- graph\n{format_graph(work)}--- emitted code\n{executable.code}"
    try:
        actual = executable(*inputs)
    except Exception as exc:
        raise AssertionError(f"the executable failed: {type(exc).__name__}: {exc}\n\n{context}") from exc
    assert_outputs_close(actual, expected, rtol, atol, f"the executable differs from the reference\n\n{context}")


def assert_concurrent(work: Callable[[int], None], threads: int = 4) -> None:
    """Run `work(seed)` for seeds 0..threads-1 on that many threads at once and re-raise the first
    failure in the caller (an assertion inside a thread would otherwise only print)."""
    errors: list[BaseException] = []

    def run(seed: int) -> None:
        try:
            work(seed)
        except BaseException as exc:
            errors.append(exc)

    started = [threading.Thread(target=run, args=(seed,)) for seed in range(threads)]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join()
    assert not errors, errors[0]
