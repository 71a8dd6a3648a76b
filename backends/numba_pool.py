"""Max pooling as a generated Numba kernel, for the Numba backend.

PyTorch's max pooling over NCHW tensors does not vectorize: a ResNet stem's 3x3 stride-2 pool over
[1, 64, 112, 112] takes ~10 ms at one thread, as long as a convolution. The kernel here takes ~0.4 ms.
Per output row it takes the max over the window's input rows at full width (contiguous, vectorized)
into a row padded with -inf, then the max over each window of that row at the stride. The row max
alternates between two buffers: a max stored over one of its own operands compiles to a masked store,
which is slow on AVX2. NaN propagates as in PyTorch. Shapes and attributes are baked into the source:

    @njit(cache=True, fastmath=FASTMATH_ELEMENTWISE, error_model="numpy", nogil=True)
    def k_pool(x, o):
        rows = np.full((2, 114), -np.inf, np.float32)
        for p in range(64):
            for oh in range(56):
                ...
"""

from __future__ import annotations

import math

from ..ir import DType, Node
from .numba_codegen import NP_TYPE

_DTYPES = (DType.f32, DType.f64)


def supports_max_pool(node: Node) -> bool:
    """Whether `max_pool_source` compiles `node`: a float 1-D or 2-D max pool over a static, non-constant input."""
    if node.op != "max_pool" or len(node.attrs["kernel"]) not in (1, 2):
        return False
    x, y = node.inputs[0], node.outputs[0]
    if x.const is not None or not (x.type.is_static and y.type.is_static) or x.type.dtype not in _DTYPES:
        return False
    return x.type.rank > len(node.attrs["kernel"]) and y.type.dtype is x.type.dtype


def max_pool_source(node: Node, name: str) -> tuple[str, str]:
    """The @njit kernel `name(x, o)` computing max pool `node` over flat contiguous arrays, and its
    C-callable entry `{name}_ptr(px, po)` taking the arrays' addresses."""
    if not supports_max_pool(node):
        raise ValueError(f"max pool %{node.outputs[0].name} is not a float 1-D/2-D max pool over static shapes")
    spatial = len(node.attrs["kernel"])
    in_shape, out_shape = node.inputs[0].type.static_shape(), node.outputs[0].type.static_shape()
    kh, kw = _rows_and_columns(node.attrs["kernel"], spatial, 1)
    sh, sw = _rows_and_columns(node.attrs["stride"] or node.attrs["kernel"], spatial, 1)
    ph, pw = _rows_and_columns(node.attrs["padding"], spatial, 0)
    dh, dw = _rows_and_columns(node.attrs["dilation"], spatial, 1)
    h, w = _rows_and_columns(in_shape[-spatial:], spatial, 1)
    oh, ow = _rows_and_columns(out_shape[-spatial:], spatial, 1)
    planes = math.prod(in_shape[:-spatial])
    width = max(pw + w, (ow - 1) * sw + (kw - 1) * dw + 1)
    dtype = NP_TYPE[node.inputs[0].type.dtype]
    window = "(m >= y) | (m != m)"  # keeps a NaN max, takes a NaN y
    horizontal = (f"            for j in range({ow}):\n"
                  f"                m = src[j * {sw}]\n"
                  f"                for kx in range(1, {kw}):\n"
                  f"                    y = src[j * {sw} + kx * {dw}]\n"
                  f"                    m = m if {window} else y\n"
                  f"                o[ob + j] = m\n")
    kernel = (
        '@njit(cache=True, fastmath=FASTMATH_ELEMENTWISE, error_model="numpy", nogil=True)\n'
        f"def {name}(x, o):\n"
        f"    rows = np.full((2, {width}), -np.inf, {dtype})\n"
        f"    for p in range({planes}):\n"
        f"        for i in range({oh}):\n"
        "            src = rows[0]\n"
        "            dst = rows[1]\n"
        "            first = True\n"
        f"            for ky in range({kh}):\n"
        f"                ih = i * {sh} - {ph} + ky * {dh}\n"
        f"                if ih < 0 or ih >= {h}:\n"
        "                    continue\n"
        f"                xb = (p * {h} + ih) * {w}\n"
        "                if first:\n"
        f"                    for j in range({w}):\n"
        f"                        src[{pw} + j] = x[xb + j]\n"
        "                    first = False\n"
        "                    continue\n"
        f"                for j in range({w}):\n"
        f"                    m = src[{pw} + j]\n"
        "                    y = x[xb + j]\n"
        f"                    dst[{pw} + j] = m if {window} else y\n"
        "                src, dst = dst, src\n"
        "            if first:  # every row of the window is padding\n"
        f"                src[{pw}:{pw + w}] = -np.inf\n"
        f"            ob = (p * {oh} + i) * {ow}\n" + horizontal)
    entry = (f'@cfunc("void(voidptr, voidptr)", cache=True, nogil=True, fastmath=FASTMATH_ELEMENTWISE, '
             'error_model="numpy")\n'
             f"def {name}_ptr(px, po):\n"
             f"    {name}(carray(px, ({planes * h * w},), {dtype}), carray(po, ({planes * oh * ow},), {dtype}))\n")
    return kernel, entry


def _rows_and_columns(values: tuple[int, ...], spatial: int, one_d_rows: int) -> list[int]:
    """A pool attribute (or shape) per spatial dim as [rows, columns]; a 1-D pool runs over one row."""
    full = list(values) * spatial if len(values) == 1 else list(values)
    return [one_d_rows] * (2 - spatial) + full
