"""ort_conv.py: runs of convolutions (with their epilogues and the pools between them) as one ONNX Runtime
session compute what eager PyTorch computes; which runs qualify, and how the measured choice is made."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import heteropass as hp
from heteropass.backends.ort_conv import (
    ChainUnsupported,
    chain_graph,
    chain_member,
    chain_runs,
    chain_session,
    choose_chains,
    split_at_pools,
)
from heteropass.backends.ort_gemm import ort_available
from heteropass.ir import DType, Graph, Node, TensorType, parse_graph, run_graph
from heteropass.ir.torch_importer import import_module
from heteropass.passes import PassContext, PassManager
from heteropass.passes.pipelines import default_pipeline
from heteropass.testing import models

pytestmark = pytest.mark.skipif(not ort_available(), reason="onnxruntime is not installed")


def _resnet() -> tuple[torch.nn.Module, Graph]:
    """The small test ResNet and its graph after the O2 pipeline (batch norm folded, epilogues fused)."""
    model = models.resnet_cnn()
    graph = import_module(model, models.resnet_inputs()).graph
    return model, PassManager(default_pipeline(2), PassContext(opt_level=2)).run(graph).graph


def _trunk(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.layer2(model.layer1(model.stem(x)))


def test_the_resnet_trunk_is_one_run_that_splits_at_its_pool() -> None:
    _, graph = _resnet()
    [run] = chain_runs(graph.nodes, chain_member)
    assert [n.op for n in run].count("max_pool") == 1 and sum(map(chain_member, run)) == 6
    assert run[0].op == "fused" and run[-1].op == "fused"
    parts = split_at_pools(run, chain_member)
    assert [len(p) for p in parts] == [5]  # the stem conv alone before the pool is no chain
    assert all(map(chain_member, parts[0]))


def test_a_chain_session_matches_eager_and_writes_into_out() -> None:
    model, graph = _resnet()
    [run] = chain_runs(graph.nodes, chain_member)
    chain = chain_graph(run, graph.is_output)
    assert len(chain.inputs) == 1 and len(chain.outputs) == 1
    call = chain_session(chain)
    x = models.resnet_inputs(seed=5)[0]
    expected = _trunk(model, x)
    out = torch.empty_like(expected)
    assert call(x, out=[out])[0] is out
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(call(x)[0], expected, rtol=1e-4, atol=1e-5)


def test_a_part_reads_the_pool_and_returns_what_is_read_later() -> None:
    model, graph = _resnet()
    [run] = chain_runs(graph.nodes, chain_member)
    [part] = split_at_pools(run, chain_member)
    chain = chain_graph(part, graph.is_output)
    x = models.resnet_inputs(seed=6)[0]
    with torch.no_grad():
        pooled = model.stem(x)
    torch.testing.assert_close(chain_session(chain)(pooled)[0], model.layer2(model.layer1(pooled)),
                               rtol=1e-4, atol=1e-5)
    # Cut after the first block: its output is read by the second block, so the cut chain returns it.
    first_block = chain_graph(part[:2], graph.is_output)
    assert [v.name for v in first_block.outputs] == [part[1].outputs[0].name]


def test_choose_chains_untimed_takes_the_whole_run_and_a_remembered_choice_is_kept() -> None:
    _, graph = _resnet()
    [run] = chain_runs(graph.nodes, chain_member)
    never_called = [lambda: pytest.fail("untimed choices run nothing")] * len(run)
    [whole] = choose_chains(run, chain_member, graph.is_output, never_called, timed=False)
    assert whole.nodes == run and whole.note == "one session whenever possible"
    assert any("conv+add+relu" in line for line in whole.describe())
    key = next(iter(_seed_choice(run, graph, "parts")))
    [part] = choose_chains(run, chain_member, graph.is_output, never_called, choices={key: ("parts", "t")})
    assert part.nodes == split_at_pools(run, chain_member)[0]
    assert choose_chains(run, chain_member, graph.is_output, never_called, choices={key: ("none", "t")}) == []


def test_choose_chains_times_every_option() -> None:
    _, graph = _resnet()
    [run] = chain_runs(graph.nodes, chain_member)
    calls = [0] * len(run)

    def node_run(i: int) -> None:
        calls[i] += 1

    choices: dict = {}
    chains = choose_chains(run, chain_member, graph.is_output, [lambda i=i: node_run(i) for i in range(len(run))],
                           choices=choices)
    assert all(c >= 3 for c in calls)  # a warm-up call and at least two timed turns each
    [(choice, times)] = choices.values()
    assert choice in ("whole", "parts", "none") and "whole" in times and "parts" in times
    assert [len(c.nodes) for c in chains] == {"whole": [len(run)], "parts": [5], "none": []}[choice]
    assert all(c.note == f"measured {times}" for c in chains)


def test_members_are_float32_convs_with_constant_weights_and_fusable_epilogues() -> None:
    text = """
    graph m(%x: f32[1,8,6,6], %r: f32[1,8,6,6], %w2: f32[8,8,3,3]) -> (f32[1,8,6,6], f32[1,8,6,6], f32[1,8,6,6]) {
      const %w: f32[8,8,3,3]
      %0: f32[1,8,6,6] = conv(%x, %w) {padding=[1]}
      %1: f32[1,8,6,6] = conv(%x, %w2) {padding=[1]}
      %2: f32[1,8,6,6] = fused[conv, add, relu](%x, %w, %r) {kind="gemm"}
        graph g(%x: f32[1,8,6,6], %w: f32[8,8,3,3], %r: f32[1,8,6,6]) -> (f32[1,8,6,6]) {
          %a: f32[1,8,6,6] = conv(%x, %w) {padding=[1]}
          %b: f32[1,8,6,6] = add(%a, %r)
          %c: f32[1,8,6,6] = relu(%b)
          return %c
        }
      %3: f32[1,8,6,6] = fused[conv, gelu](%x, %w) {kind="gemm"}
        graph h(%x: f32[1,8,6,6], %w: f32[8,8,3,3]) -> (f32[1,8,6,6]) {
          %a: f32[1,8,6,6] = conv(%x, %w) {padding=[1]}
          %c: f32[1,8,6,6] = gelu(%a)
          return %c
        }
      return %1, %2, %3
    }"""
    graph = parse_graph(text, constants={"w": torch.randn(8, 8, 3, 3)})
    assert [chain_member(n) for n in graph.nodes] == [True, False, True, False]
    assert chain_runs(graph.nodes, chain_member) == []  # no two members are adjacent


def test_a_graph_the_exporter_cannot_write_is_unsupported() -> None:
    graph = Graph("g")
    x = graph.add_input("x", TensorType((2, 3), DType.f32))
    node: Node = graph.add_node("opaque", [x], {"target": "custom"},
                                output_types=[TensorType((2, 3), DType.f32)])
    graph.set_outputs(node.outputs)
    with pytest.raises(ChainUnsupported, match="chain g"):
        chain_session(graph)


def test_conv_with_residual_and_relu_in_one_session_matches_eager() -> None:
    w, b = torch.randn(8, 4, 3, 3) / 6, torch.randn(8)
    w2 = torch.randn(8, 8, 1, 1) / 3
    text = """
    graph m(%x: f32[2,4,9,9], %r: f32[2,8,9,9]) -> (f32[2,8,9,9]) {
      const %w: f32[8,4,3,3]
      const %b: f32[8]
      const %w2: f32[8,8,1,1]
      %0: f32[2,8,9,9] = conv(%x, %w, %b) {padding=[1]}
      %1: f32[2,8,9,9] = fused[conv, add, relu](%0, %w2, %r) {kind="gemm"}
        graph g(%y: f32[2,8,9,9], %v: f32[8,8,1,1], %s: f32[2,8,9,9]) -> (f32[2,8,9,9]) {
          %a: f32[2,8,9,9] = conv(%y, %v)
          %c: f32[2,8,9,9] = add(%a, %s)
          %d: f32[2,8,9,9] = relu(%c)
          return %d
        }
      return %1
    }"""
    graph = parse_graph(text, constants={"w": w, "b": b, "w2": w2})
    [run] = chain_runs(graph.nodes, chain_member)
    x, r = torch.randn(2, 4, 9, 9), torch.randn(2, 8, 9, 9)
    got = chain_session(chain_graph(run, graph.is_output))(x, r)[0]
    expected = F.relu(F.conv2d(F.conv2d(x, w, b, padding=1), w2) + r)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def _seed_choice(run: list[Node], graph: Graph, choice: str) -> dict:
    """The `choices` entry that `choose_chains` looks up for `run`, as a measurement would leave it."""
    recorded: dict = {}
    choose_chains(run, chain_member, graph.is_output, [lambda: None] * len(run), choices=recorded)
    return {key: (choice, "t") for key in recorded}


def test_a_pool_may_end_a_run_but_not_start_one() -> None:
    t = "f32[1,8,8,8]"
    text = f"""
    graph m(%x: {t}) -> (f32[1,8,4,4]) {{
      const %w: f32[8,8,3,3]
      %0: {t} = max_pool(%x) {{kernel=[1, 1]}}
      %1: {t} = conv(%0, %w) {{padding=[1]}}
      %2: f32[1,8,4,4] = max_pool(%1) {{kernel=[2, 2]}}
      %3: f32[1,8,4,4] = relu(%2)
      %4: f32[1,8,4,4] = conv(%3, %w) {{padding=[1]}}
      %5: f32[1,8,4,4] = conv(%4, %w) {{padding=[1]}}
      %6: f32[1,8,4,4] = max_pool(%5) {{kernel=[1, 1]}}
      return %6
    }}"""
    graph = parse_graph(text, constants={"w": torch.randn(8, 8, 3, 3)})
    runs = chain_runs(graph.nodes, chain_member)
    assert [[n.outputs[0].name for n in run] for run in runs] == [["1", "2"], ["4", "5", "6"]]
    assert split_at_pools(runs[0], chain_member) == [] and split_at_pools(runs[1], chain_member) == [runs[1][:2]]
    x = torch.randn(1, 8, 8, 8)
    w = graph.constants["w"].const
    pooled = chain_session(chain_graph(runs[0], graph.is_output))(x)[0]
    torch.testing.assert_close(pooled, F.max_pool2d(F.conv2d(x, w, padding=1), 2), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pool", ["max_pool", "avg_pool"])
def test_a_ceil_mode_pool_whose_last_window_pytorch_drops_stays_out_of_chains(pool: str) -> None:
    """On 11x11 with kernel 2, stride 2, padding 1, PyTorch drops the window that would start in the right
    padding (6x6); ONNX Runtime's ceil_mode keeps it (7x7). Such a pool joins no chain, a session holding
    it computes PyTorch's windows (the export leaves out a ceil_mode that adds none), and the backend
    computes what eager PyTorch does."""
    text = f"""
    graph m(%x: f32[2,3,11,11]) -> (f32[2,4,6,6]) {{
      const %w1: f32[4,3,3,3]
      const %w2: f32[4,4,3,3]
      %0: f32[2,4,11,11] = conv(%x, %w1) {{padding=[1]}}
      %1: f32[2,4,11,11] = conv(%0, %w2) {{padding=[1]}}
      %2: f32[2,4,6,6] = {pool}(%1) {{kernel=[2, 2], stride=[2, 2], padding=[1, 1], ceil_mode=true}}
      return %2
    }}"""
    w1, w2 = torch.randn(4, 3, 3, 3) / 4, torch.randn(4, 4, 3, 3) / 6
    graph = parse_graph(text, constants={"w1": w1, "w2": w2})
    [run] = chain_runs(graph.nodes, chain_member)
    assert [n.op for n in run] == ["conv", "conv"]
    x = torch.randn(2, 3, 11, 11)
    session = chain_session(chain_graph(graph.nodes, graph.is_output))
    torch.testing.assert_close(session(x)[0], run_graph(graph, x)[0], rtol=1e-4, atol=1e-5)

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2 = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 3, padding=1)
            self.pool = (torch.nn.MaxPool2d if pool == "max_pool" else torch.nn.AvgPool2d)(2, 2, 1, ceil_mode=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.pool(torch.relu(self.c2(torch.relu(self.c1(x)))))

    model, x = Model().eval(), torch.randn(2, 3, 11, 11)
    with torch.no_grad():
        expected = model(x)
    assert expected.shape == (2, 4, 6, 6)
    torch.testing.assert_close(hp.compile(model, (x,), backends=["numba"])(x), expected, rtol=1e-4, atol=1e-5)
