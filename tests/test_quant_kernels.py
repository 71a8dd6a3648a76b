"""quant_gemm.py: every plan for linear_weight_int8 / linear_dynamic_int8 computes the op's reference
(dequantize, then a float32 linear), the dynamic path quantizes x exactly as the reference does and
multiplies int8 values exactly, and the Numba backend claims and compiles these nodes.

Tolerance: the kernels sum the products in another order than the reference's GEMM (vector lanes,
blocks scaled after their partial sums), and any two float32 summation orders of K terms differ by
at most about 2 * K * eps * sum(|terms|); `assert_within_accumulation_error` allows that, elementwise.
A wrong scale, block index or rounding of x is off by orders of magnitude more.
"""

from __future__ import annotations

import re

import llvmlite.binding as llvm
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from heteropass.backends import ort_int8, quant_gemm
from heteropass.backends.executable import build_executable
from heteropass.backends.numba_backend import NumbaBackend
from heteropass.backends.reference import ReferenceBackend
from heteropass.ir import DType, Graph, TensorType, get_op
from heteropass.ir.ops.quant import quantize_rows_symmetric
from heteropass.testing import assert_outputs_close

NUMBA = NumbaBackend()
BACKENDS = [NUMBA, ReferenceBackend()]
EPS = torch.finfo(torch.float32).eps
# block 48 leaves a short last block of 160; activation_bits 16 rounds x per row to 16 bits first
WEIGHT_ATTRS = [{"block_size": 0}, {"block_size": 32}, {"block_size": 48}, {"block_size": 0, "activation_bits": 16},
                {"block_size": 48, "activation_bits": 16}]
DYNAMIC_ATTRS = [{"granularity": "row"}, {"granularity": "tensor"}]


def operands(op: str, x_shape: tuple[int, ...], out: int, attrs: dict, bias: bool,
             seed: int = 0) -> list[torch.Tensor | None]:
    """x ~ N(0, 1) with no zeros, full-range int8 weights with no zeros, positive scales, a random bias."""
    g = torch.Generator().manual_seed(seed)
    inner = x_shape[-1]
    x = torch.randn(x_shape, generator=g)
    x = torch.where(x == 0, 0.5, x)
    qweight = torch.randint(-127, 127, (out, inner), generator=g, dtype=torch.int8)
    qweight = torch.where(qweight == 0, 127, qweight).to(torch.int8)
    block = attrs.get("block_size", 0)
    scale_shape = (out, -(-inner // block)) if block else (out,)
    scale = (torch.rand(scale_shape, generator=g) + 0.5) / (127 * inner**0.5)
    return [x, qweight, scale, torch.randn(out, generator=g) if bias else None]


def quant_node(op: str, args: list[torch.Tensor | None], attrs: dict, constant_weights: bool = False
               ) -> tuple[Graph, list[torch.Tensor]]:
    """A graph of one `op` node on `args`: x is an input; the rest inputs too, or constants."""
    graph = Graph("m")
    values, inputs = [], []
    for name, tensor in zip(("x", "w", "s", "b"), args, strict=True):
        if tensor is None:
            continue
        if constant_weights and name != "x":
            values.append(graph.add_constant(name, tensor))
        else:
            values.append(graph.add_input(name, TensorType.of(tensor)))
            inputs.append(tensor)
    graph.set_outputs([graph.call(op, *values, **attrs)])
    return graph, inputs


def assert_within_accumulation_error(actual: torch.Tensor, op: str, args: list[torch.Tensor | None],
                                     attrs: dict) -> None:
    x, qweight, scale, bias = args
    expected = get_op(op).reference(*[a for a in args if a is not None], **attrs)
    block = attrs.get("block_size", 0)
    weight = get_op("dequantize").reference(qweight, scale, axis=1 if block else 0, block_size=block)
    if op == "linear_dynamic_int8":
        q, x_scale = quantize_rows_symmetric(x, attrs["granularity"])
        x = q.float() * x_scale
    elif attrs.get("activation_bits", 32) == 16:
        q, x_scale = quantize_rows_symmetric(x, "row", bits=16)
        x = q.float() * x_scale
    magnitude = x.abs().double() @ weight.abs().double().t() + (0 if bias is None else bias.abs().double())
    bound = (2 * x.shape[-1] + 8) * EPS * magnitude
    assert actual.shape == expected.shape
    excess = (actual.double() - expected.double()).abs() - bound
    assert excess.max() <= 0, f"off by {excess.max():.3g} beyond the accumulation bound at {excess.argmax()}"


@pytest.mark.parametrize("rows", [1, 3, 64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("op, attrs", [("linear_weight_int8", a) for a in WEIGHT_ATTRS]
                         + [("linear_dynamic_int8", a) for a in DYNAMIC_ATTRS])
def test_every_plan_matches_the_reference(op: str, attrs: dict, rows: int, bias: bool) -> None:
    args = operands(op, (rows, 160), 37, attrs, bias)
    graph, _ = quant_node(op, args, attrs, constant_weights=True)  # every plan, ort-int included
    plans = quant_gemm.quant_plans(graph.nodes[0])
    assert len(plans) >= 2
    for plan in plans:
        assert_within_accumulation_error(plan.call(*args), op, args, attrs)


@pytest.mark.parametrize("op, attrs", [("linear_weight_int8", {"block_size": 48}),
                                       ("linear_dynamic_int8", {"granularity": "row"})])
def test_three_dimensional_x_and_out_buffers(op: str, attrs: dict) -> None:
    args = operands(op, (2, 5, 160), 37, attrs, bias=True)
    graph, _ = quant_node(op, args, attrs, constant_weights=True)  # every plan, ort-int included
    for plan in quant_gemm.quant_plans(graph.nodes[0]):
        out = torch.full((2, 5, 37), float("nan"))
        assert plan.call(*args, out=out) is out
        assert_within_accumulation_error(out, op, args, attrs)


@given(rows=st.integers(1, 9), out=st.integers(1, 40), inner=st.integers(1, 200), block=st.integers(0, 70),
       dynamic=st.booleans(), bias=st.booleans(), seed=st.integers(0, 2**16))
@settings(max_examples=60)
def test_plans_match_the_reference_on_random_shapes(rows: int, out: int, inner: int, block: int, dynamic: bool,
                                                    bias: bool, seed: int) -> None:
    op = "linear_dynamic_int8" if dynamic else "linear_weight_int8"
    bits = (32, 16)[seed % 2]
    attrs = {"granularity": ("row", "tensor")[seed % 2]} if dynamic else {"block_size": block, "activation_bits": bits}
    args = operands(op, (rows, inner), out, attrs, bias, seed)
    graph, _ = quant_node(op, args, attrs, constant_weights=True)  # every plan, ort-int included
    for plan in quant_gemm.quant_plans(graph.nodes[0]):
        assert_within_accumulation_error(plan.call(*args), op, args, attrs)


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("granularity", ["row", "tensor"])
def test_x_is_quantized_exactly_as_the_reference_does(granularity: str, bits: int) -> None:
    top = 2 ** (bits - 1) - 1
    x = torch.randn(6, 300) * torch.logspace(-3, 3, 6).unsqueeze(1)
    # Rows whose amax is `top` have scale 1: their halves are ties that round to even.
    x[0, :4] = torch.tensor([float(top), 2.5, -3.5, 0.5])
    x[1] = 0.0
    shape = quant_gemm._Shape(6, 1, 300, 300)
    q, scale = quant_gemm._quantize(x, shape, per_row=granularity == "row", top=top)
    expected_q, expected_scale = quantize_rows_symmetric(x, granularity, bits=bits)
    assert torch.equal(q, expected_q.to(torch.int16))
    assert torch.equal(scale, expected_scale.reshape(-1))
    if granularity == "row":
        assert q[0, :4].tolist() == [top, 2, -4, 0]


@pytest.mark.parametrize("op, attrs", [("linear_weight_int8", {"block_size": 0, "activation_bits": 16}),
                                       ("linear_weight_int8", {"block_size": 48, "activation_bits": 16}),
                                       *(("linear_dynamic_int8", a) for a in DYNAMIC_ATTRS)])
def test_a_nan_or_inf_in_x_makes_its_rows_results_nan_in_every_plan(op: str, attrs: dict) -> None:
    """A row holding a NaN or an infinity has no finite scale: every plan gives NaN for that row (the whole
    result per tensor), as the reference does; eager float gives NaN or +-inf there, finite elsewhere."""
    args = operands(op, (4, 160), 37, attrs, bias=True)
    x = args[0].clone()
    x[1, 3], x[2, 100] = float("nan"), float("-inf")
    args[0] = x
    block = attrs.get("block_size", 0)
    weight = get_op("dequantize").reference(args[1], args[2], axis=1 if block else 0, block_size=block)
    eager = torch.nn.functional.linear(x, weight, args[3])
    expected = get_op(op).reference(*args, **attrs)
    rows_with = torch.tensor([False, True, True, False])
    assert torch.equal(eager.isfinite().all(dim=1), ~rows_with)
    bad = rows_with if attrs.get("granularity") != "tensor" else torch.ones(4, dtype=torch.bool)
    assert expected[bad].isnan().all() and expected[~bad].isfinite().all()
    graph, _ = quant_node(op, args, attrs, constant_weights=True)  # every plan, ort-int included
    for plan in quant_gemm.quant_plans(graph.nodes[0]):
        got = plan.call(*args)
        assert got[bad].isnan().all(), plan.name
        if (~bad).any():
            torch.testing.assert_close(got[~bad], expected[~bad], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(got[~bad], eager[~bad], rtol=0, atol=0.05 * float(eager[~bad].abs().max()))


def test_x_is_divided_by_its_scale_not_multiplied_by_the_reciprocal() -> None:
    """Near halves, x / s and x * (1 / s) round to different integers; the reference divides."""
    scale = torch.tensor(1.0) / 127.0
    halves = (torch.arange(-126, 126, dtype=torch.float32) + 0.5) * scale
    near = torch.cat([halves, torch.nextafter(halves, halves + 1), torch.nextafter(halves, halves - 1)])
    near = torch.cat([near, torch.nextafter(near, near + 1), torch.nextafter(near, near - 1)])
    differs = near[torch.round(near / scale) != torch.round(near * (1 / scale))]
    assert differs.numel() > 0
    x = torch.cat([torch.tensor([1.0]), differs]).unsqueeze(0)
    q, _ = quant_gemm._quantize(x, quant_gemm._Shape(1, 1, x.shape[1], x.shape[1]), per_row=True, top=127)
    assert torch.equal(q, quantize_rows_symmetric(x, "row")[0].to(torch.int16))


def _full_range_operands(rows: int, out: int, inner: int, top: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(top)
    q = torch.randint(-top, top + 1, (rows, inner), generator=g, dtype=torch.int16)
    w = torch.randint(-128, 128, (out, inner), generator=g, dtype=torch.int8)
    q[0], w[0], w[1] = top, 127, -128
    return q, w


def test_int8_products_are_exact_at_full_range() -> None:
    """The int16 pair sums of vpmaddwd cannot saturate; vpmaddubsw-style u8*s8 kernels would."""
    inner = 1031  # 127 * 127 * 1031 > 2**24: the float32 result rounds, the int32 sum must not
    q, w = _full_range_operands(5, 7, inner, 127)
    ones_x, ones_w, zeros = np.ones(5, np.float32), np.ones(7, np.float32), np.zeros(7, np.float32)
    exact = (q.long() @ w.long().t()).float()
    for kernel, sizes in ((quant_gemm._int_rows, (5, 7, inner, 1)), (quant_gemm._int_streams, (5, 7, inner, inner,
                                                                                                inner, 1))):
        y = np.empty(5 * 7, np.float32)
        kernel(q.flatten().numpy(), w.flatten().numpy(), ones_x, ones_w, zeros, y, *sizes)
        assert torch.equal(torch.from_numpy(y).view(5, 7), exact), kernel


def test_int16_products_are_exact_per_chunk() -> None:
    """Full-range int16 x int8 sums overflow int32 past 512 terms: each chunk of 512 is summed exactly, and
    only the float32 sum of the chunks rounds (the last row reads every weight row, the streams' seams)."""
    inner, chunk = 1031, quant_gemm._INT16_CHUNK
    q, w = _full_range_operands(3, 9, inner, 32767)
    y = np.empty(3 * 9, np.float32)
    quant_gemm._int_streams(q.flatten().numpy(), w.flatten().numpy(), np.ones(3, np.float32), np.ones(9, np.float32),
                            np.zeros(9, np.float32), y, 3, 9, inner, inner, chunk, 1)
    y = torch.from_numpy(y).view(3, 9)
    parts = [q[:, c:c + chunk].long() @ w[:, c:c + chunk].long().t() for c in range(0, inner, chunk)]
    assert all(p.abs().max() < 2**31 for p in parts) and sum(parts)[0, 0] >= 2**31
    floats = sum(p.float() for p in parts)
    assert torch.equal(y, floats)


@pytest.mark.parametrize("length", [0, 1, 15, 16, 17, 35, 64, 1031])
def test_the_vector_dot_covers_every_element_once(length: int) -> None:
    """`_dot_i8` on slices that start mid-array and end in its scalar tail, full-range weights included."""
    g = torch.Generator().manual_seed(length)
    x = torch.randn(length + 7, generator=g)
    w = torch.randint(-128, 128, (length + 3,), generator=g, dtype=torch.int8)
    if length >= 2:
        w[3], w[4] = -128, 127
    dot = njit(**{**quant_gemm._JIT, "cache": False})(lambda a, b, i, j, n: quant_gemm._dot_i8(a, b, i, j, n))
    actual = dot(x.numpy(), w.numpy(), 7, 3, length)
    terms = x[7:].double() * w[3:].double()
    assert abs(actual - terms.sum().item()) <= (2 * length + 8) * EPS * terms.abs().sum().item()


@pytest.mark.parametrize("length", [0, 1, 7, 8, 9, 31, 512])
def test_the_four_row_int_dot_covers_every_element_once(length: int) -> None:
    """`_dot4_i16` from an offset into q and four different weight rows (two equal), into its scalar tail."""
    g = torch.Generator().manual_seed(length)
    q = torch.randint(-32767, 32768, (length + 5,), generator=g, dtype=torch.int16)
    w = torch.randint(-128, 128, (4 * length + 11,), generator=g, dtype=torch.int8)
    starts = [2, length + 3, 2, 3 * length + 9]
    dot = njit(**{**quant_gemm._JIT, "cache": False})(
        lambda a, b, i, r0, r1, r2, r3, n: quant_gemm._dot4_i16(a, b, i, r0, r1, r2, r3, n))
    actual = dot(q.numpy(), w.numpy(), 5, *starts, length)
    expected = [int((q[5:].long() * w[r:r + length].long()).sum()) for r in starts]
    assert list(actual) == expected


@pytest.mark.skipif("avx2" not in {k for k, v in llvm.get_host_cpu_features().items() if v},
                    reason="the vector instructions checked are AVX2's")
def test_hot_loops_vectorize() -> None:
    """The weight stream is converted and multiplied 8 lanes at a time for four rows of x, 4 lanes at a time
    (`_dot_i8`) for one; `_int_rows`' int8 dot (left to LLVM) uses vpmaddwd. A scalar loop (say, a
    signed/unsigned index mix that Numba types float64) is about 20x slower."""
    jit = {**quant_gemm._JIT, "cache": False}
    f32, i8, i16 = (torch.ones(64, dtype=t).numpy() for t in (torch.float32, torch.int8, torch.int16))
    gemv = njit(**jit)(quant_gemm._weight_gemv.py_func)
    gemv(f32, i8, f32, f32, f32, 1, 1, 64, 32)
    asm = "".join(gemv.inspect_asm().values())
    assert re.search(r"vcvtdq2ps\t%ymm", asm) and re.search(r"vfmadd\d+ps\t.*%ymm", asm)
    assert re.search(r"vcvtdq2ps\t%xmm", asm) and re.search(r"vfmadd\d+ps\t.*%xmm", asm)
    rows = njit(**{**quant_gemm._JIT_ORDERED, "cache": False})(quant_gemm._int_rows.py_func)
    rows(i16, i8, f32, f32, f32, f32, 1, 1, 64, 1)
    assert "vpmaddwd" in "".join(rows.inspect_asm().values())


@pytest.mark.parametrize("constant_weights", [True, False])
@pytest.mark.parametrize("op, attrs", [("linear_weight_int8", {"block_size": 0}),
                                       ("linear_weight_int8", {"block_size": 48}),
                                       ("linear_dynamic_int8", {"granularity": "row"}),
                                       ("linear_dynamic_int8", {"granularity": "tensor"})])
def test_numba_backend_claims_and_compiles_quantized_linears(op: str, attrs: dict, constant_weights: bool) -> None:
    args = operands(op, (3, 4, 160), 37, attrs, bias=True)
    graph, inputs = quant_node(op, args, attrs, constant_weights)
    assert NUMBA.supports(graph.nodes[0])
    executable = build_executable(graph.clone(), BACKENDS)
    assert [p.backend for p in executable.partitions] == [NUMBA], executable.code
    assert f"# {op}: Numba" in executable.code
    (actual,) = executable(*inputs)
    assert_within_accumulation_error(actual, op, args, attrs)
    assert_outputs_close([actual], [get_op(op).reference(*[a for a in args if a is not None], **attrs)],
                         rtol=1e-4, atol=1e-5)


def _saturating_int_mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """AVX2's u8 x s8 int8 GEMM: x shifted to u8 (+128), pairs of products summed in saturating int16
    (vpmaddubsw), then the shift's compensation."""
    shifted = a.long() + 128
    products = shifted.unsqueeze(2) * b.long().unsqueeze(0)
    if products.shape[1] % 2:
        products = torch.cat([products, torch.zeros_like(products[:, :1])], dim=1)
    pairs = (products[:, 0::2] + products[:, 1::2]).clamp(-32768, 32767)
    return (pairs.sum(1) - 128 * b.long().sum(0)).to(torch.int32)


def test_int_mm_is_offered_only_where_the_library_multiplies_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch._int_mm is exact on AVX-512 VNNI, saturates on AVX2 and returns garbage for an inner size of 1
    (torch 2.13); a probe at the node's sizes decides whether the int-mm plan is listed."""
    probe = quant_gemm.int_mm_is_exact.__wrapped__
    real = torch._int_mm

    def off_by_one(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        result = real(a, b)
        result[-1, -1] += 1
        return result

    def refuses(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("no int8 GEMM here")

    for fake in (_saturating_int_mm, off_by_one, refuses):
        monkeypatch.setattr(torch, "_int_mm", fake)
        assert not probe(3, 160, 37), fake.__name__
    monkeypatch.undo()
    assert not probe(0, 160, 37) and not ort_int8.ort_int8_is_exact.__wrapped__(0, 160, 37)  # an empty batch
    for rows, inner in ((3, 160), (64, 160), (5, 1)):
        args = operands("linear_dynamic_int8", (rows, inner), 37, {"granularity": "row"}, bias=True)
        graph, _ = quant_node("linear_dynamic_int8", args, {"granularity": "row"})
        names = [plan.name for plan in quant_gemm.quant_plans(graph.nodes[0])]
        assert ("int-mm" in names) == quant_gemm.int_mm_is_exact(rows, inner, 37)
        assert ("int-mm" in names) == probe(rows, inner, 37)


def test_ort_int_is_offered_only_where_onnx_runtime_multiplies_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLAS's u8 x s8 product is exact with VNNI and saturates on AVX2; a probe session at the node's sizes
    decides whether the ort-int plan (which needs a constant weight) is listed."""
    probe = ort_int8.ort_int8_is_exact.__wrapped__

    class Saturating:
        def __init__(self, weight: np.ndarray, rows: int, threads: int) -> None:
            self.weight = torch.from_numpy(weight)

        def run(self, outputs: object, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
            q = torch.from_numpy(feed["x"].astype(np.int16) - ort_int8.ZERO_POINT).to(torch.int8)
            return [_saturating_int_mm(q, self.weight.t()).numpy()]

    if ort_int8.ort_available():
        monkeypatch.setattr(ort_int8, "_session", Saturating)
        assert not probe(3, 160, 37)
        monkeypatch.undo()
    for rows, constant in ((3, True), (64, True), (3, False)):
        args = operands("linear_dynamic_int8", (rows, 160), 37, {"granularity": "row"}, bias=True)
        graph, _ = quant_node("linear_dynamic_int8", args, {"granularity": "row"}, constant_weights=constant)
        names = [plan.name for plan in quant_gemm.quant_plans(graph.nodes[0])]
        assert ("ort-int" in names) == (constant and ort_int8.ort_int8_is_exact(rows, 160, 37))


def test_the_int_mm_plan_rescales_exact_products() -> None:
    """Where torch._int_mm is exact, the plan's result is the exact integer product scaled, to float32
    rounding (three roundings: the int32 sum to float32 and two products), also for a row of 127s against
    weight rows of 127s and -128s (beyond what the quantizer makes), where a saturating kernel is off by
    thousands."""
    if not quant_gemm.int_mm_is_exact(4, 1031, 7):
        pytest.skip("torch._int_mm is not exact on this CPU")
    shape = quant_gemm._Shape(4, 7, 1031, 1031)
    x = torch.randn(4, 1031)
    x[0] = 1.0  # quantizes to 127 everywhere
    w = torch.randint(-127, 128, (7, 1031), dtype=torch.int8)
    w[0], w[1] = 127, -128
    ws, bias = torch.rand(7) + 0.5, torch.randn(7)
    got = quant_gemm.int_mm(shape, per_row=True).call(x, w, ws, bias)
    q, xs = quantize_rows_symmetric(x, "row")
    scaled = (q.double() @ w.double().t()) * xs.double() * ws.double()  # integer sums below 2**31: exact
    bound = 4 * EPS * (scaled.abs() + bias.abs().double())
    assert ((got.double() - (scaled + bias.double())).abs() <= bound).all()


@pytest.mark.parametrize("attrs", DYNAMIC_ATTRS)
def test_huge_finite_x_gives_finite_dynamic_results_in_every_plan(attrs: dict) -> None:
    """x's scale is amax / 127 (here ~1e34); int32 sums (~1e5 here) times it overflow float32, the result
    does not: every plan multiplies by the weight's scale first."""
    op = "linear_dynamic_int8"
    args = operands(op, (3, 4096), 8, attrs, bias=True)
    args[0] = args[0] * 3e35
    graph, _ = quant_node(op, args, attrs, constant_weights=True)
    assert get_op(op).reference(*args, **attrs).isfinite().all()
    for plan in quant_gemm.quant_plans(graph.nodes[0]):
        assert_within_accumulation_error(plan.call(*args), op, args, attrs)


def test_backend_declines_what_the_kernels_do_not_compute() -> None:
    x, weight, scale = torch.randn(2, 16), torch.ones(4, 16, dtype=torch.int8), torch.ones(4)
    half, _ = quant_node("linear_weight_int8", [x.half(), weight, scale.half(), None], {"block_size": 0})
    symbolic = Graph("m")
    value = symbolic.add_input("x", TensorType(("n", 16), DType.f32))
    constants = [symbolic.add_constant("w", weight), symbolic.add_constant("s", scale)]
    symbolic.add_node("linear_dynamic_int8", [value, *constants], output_types=[TensorType(("n", 4), DType.f32)])
    no_inputs, _ = quant_node("linear_dynamic_int8", [torch.randn(2, 0), torch.ones(4, 0, dtype=torch.int8), scale,
                                                      torch.randn(4)], {"granularity": "row"})
    for node in (half.nodes[0], symbolic.nodes[0], no_inputs.nodes[0]):
        assert not NUMBA.supports(node)


def test_the_measured_choice_is_remembered_per_shape() -> None:
    args = operands("linear_weight_int8", (1, 96), 24, {"block_size": 0}, bias=False)
    graph, _ = quant_node("linear_weight_int8", args, {"block_size": 0})
    choices: dict[tuple, str] = {}
    plan = quant_gemm.choose_quant_plan(graph.nodes[0], choices)
    assert list(choices.values()) == [plan.name]
    assert plan.name in {p.name for p in quant_gemm.quant_plans(graph.nodes[0])}
    assert quant_gemm.choose_quant_plan(graph.nodes[0], choices).name == plan.name
    assert len(choices) == 1
