"""Capability-based partitioning: claims in priority order, maximal merging, never a cycle."""

from __future__ import annotations

import random

import pytest
import torch

from heteropass.backends.base import Backend, Kernel
from heteropass.backends.executable import build_executable
from heteropass.backends.partition import Partition, PartitionError, partition
from heteropass.backends.reference import ReferenceBackend
from heteropass.ir import DType, Graph, Node, TensorType, get_op, parse_graph, run_graph, verify
from heteropass.ir.sample import random_inputs


class ElementwiseOnly(Backend):
    """A second backend that claims only elementwise ops and runs them through a reference kernel."""

    name = "elementwise"
    device = "cpu"

    def __init__(self) -> None:
        self.compiled: list[Graph] = []

    def supports(self, node: Node) -> bool:
        return get_op(node.op).kind == "elementwise"

    def compile(self, partition: Graph) -> Kernel:
        verify(partition)
        assert all(self.supports(node) for node in partition.nodes)
        self.compiled.append(partition)
        return ReferenceBackend().compile(partition)


def assert_executable_order(graph: Graph, parts: list[Partition]) -> None:
    """Every node is in exactly one partition, and each partition reads only values available
    before it runs: graph inputs, constants, and outputs of earlier partitions."""
    placed = [node for part in parts for node in part.nodes]
    assert sorted(map(id, placed)) == sorted(map(id, graph.nodes))
    available = {id(v) for v in graph.inputs} | {id(v) for v in graph.constants.values()}
    for part in parts:
        inside = {id(v) for node in part.nodes for v in node.outputs}
        for node in part.nodes:
            for value in node.inputs:
                assert id(value) in available or id(value) in inside, f"{part} reads %{value.name} too early"
        for value in part.inputs:
            assert id(value) in available and value.const is None
        available |= {id(v) for v in part.outputs}
    assert all(id(v) in available for v in graph.outputs)


DIAMOND = """\
graph diamond(%x: f32[4,4]) -> (f32[4,4]) {
  %0: f32[4,4] = relu(%x)
  %1: f32[4,4] = matmul(%0, %0)
  %2: f32[4,4] = exp(%0)
  %3: f32[4,4] = add(%1, %2)
  return %3
}
"""


def test_diamond_does_not_merge_across_the_other_backend() -> None:
    # relu, exp and add are elementwise, but add waits for matmul, which waits for relu: one
    # elementwise partition holding all three would have to run both before and after matmul.
    graph = parse_graph(DIAMOND)
    parts = partition(graph, [ElementwiseOnly(), ReferenceBackend()])
    assert [(p.backend.name, [n.op for n in p.nodes]) for p in parts] == [
        ("elementwise", ["relu", "exp"]), ("reference", ["matmul"]), ("elementwise", ["add"])]
    assert_executable_order(graph, parts)
    first = parts[0]
    assert [v.name for v in first.inputs] == ["x"]
    assert [v.name for v in first.outputs] == ["0", "2"]


def test_independent_nodes_of_one_backend_share_a_partition() -> None:
    graph = parse_graph("""\
graph g(%x: f32[4,4]) -> (f32[4,4]) {
  %0: f32[4,4] = matmul(%x, %x)
  %1: f32[4,4] = exp(%x)
  %2: f32[4,4] = transpose(%x) {dim0=0, dim1=1}
  %3: f32[4,4] = add(%0, %2)
  %4: f32[4,4] = mul(%3, %1)
  return %4
}
""")
    parts = partition(graph, [ElementwiseOnly(), ReferenceBackend()])
    assert [[n.op for n in p.nodes] for p in parts] == [["matmul", "transpose"], ["exp", "add", "mul"]]
    assert_executable_order(graph, parts)


def test_partition_created_first_may_run_later() -> None:
    # exp joins the first elementwise partition, which then depends on the matmul partition.
    graph = parse_graph("""\
graph g(%x: f32[4,4]) -> (f32[4,4], f32[4,4]) {
  %0: f32[4,4] = relu(%x)
  %1: f32[4,4] = matmul(%x, %x)
  %2: f32[4,4] = exp(%1)
  return %0, %2
}
""")
    parts = partition(graph, [ElementwiseOnly(), ReferenceBackend()])
    assert [[n.op for n in p.nodes] for p in parts] == [["matmul"], ["relu", "exp"]]
    assert_executable_order(graph, parts)


def test_sets_devices_and_names_unclaimed_nodes() -> None:
    class Cuda(ElementwiseOnly):
        name = "fake-cuda"
        device = "cuda"

    graph = parse_graph(DIAMOND)
    partition(graph, [Cuda(), ReferenceBackend()])
    assert [n.device for n in graph.nodes] == ["cuda", "cpu", "cuda", "cuda"]
    with pytest.raises(PartitionError, match=r"no backend supports node 1 `%1: f32\[4,4\] = matmul\(%0, %0\)"
                                             r"[^`]*` \(tried: fake-cuda\)"):
        partition(graph, [Cuda()])


def test_subgraph_is_standalone_and_shares_constants() -> None:
    graph = parse_graph("""\
graph g(%x: f32[4,4]) -> (f32[4,4]) {
  const %w: f32[4,4]
  %0: f32[4,4] = mul(%x, %w)
  %1: f32[4,4] = matmul(%0, %w)
  %2: f32[4,4] = add(%1, %w)
  return %2
}
""")
    parts = partition(graph, [ElementwiseOnly(), ReferenceBackend()])
    sub = parts[1].subgraph()
    verify(sub)
    assert sub.name == "reference_1"
    assert [v.name for v in sub.inputs] == ["0"] and [v.name for v in sub.outputs] == ["1"]
    assert sub.constants["w"].const.data_ptr() == graph.constants["w"].const.data_ptr()
    assert [n.device for n in sub.nodes] == ["cpu"]


def random_graph(rng: random.Random, size: int) -> Graph:
    """A random DAG of unary and binary ops, half elementwise, reading random earlier values."""
    graph = Graph("random")
    values = [graph.add_input(f"x{i}", TensorType((3, 3), DType.f32)) for i in range(2)]
    values.append(graph.add_constant("c", torch.full((3, 3), 0.5)))
    for _ in range(size):
        op = rng.choice(["add", "mul", "tanh", "matmul", "transpose", "softmax"])
        arity = 2 if op in ("add", "mul", "matmul") else 1
        args = [rng.choice(values[-6:]) for _ in range(arity)]
        attrs = {"transpose": {"dim0": 0, "dim1": 1}, "softmax": {"dim": -1}}.get(op, {})
        values.append(graph.call(op, *args, **attrs))
    graph.set_outputs(values[-3:])
    return graph


@pytest.mark.parametrize("seed", range(12))
def test_random_graphs_partition_without_cycles_and_keep_results(seed: int) -> None:
    graph = random_graph(random.Random(seed), 24)
    backend = ElementwiseOnly()
    executable = build_executable(graph, [backend, ReferenceBackend()])
    assert_executable_order(graph, executable.partitions)
    assert len(backend.compiled) == sum(p.backend is backend for p in executable.partitions)
    inputs = random_inputs(graph, seed=seed)
    for actual, expected in zip(executable(*inputs), run_graph(graph, *inputs), strict=True):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)
