"""Source generation for a reduction region over a dimension that is not the last ("column" reduction:
`x.sum(dim=1)` of [B, S, H], softmax over the channels of NCHW).

The loops run over the dims before the reduced one (outer), then per pass over the reduced dim (j),
then over the dims after it, merged (t): the innermost loop walks memory contiguously and vectorizes.
What a row kernel (numba_codegen.emit_kernel) keeps in a scalar per row, accumulators and the values
computed from them, is here an array over t, filled once per outer iteration:

    @njit(cache=True, fastmath=FASTMATH_REDUCTION, error_model="numpy", nogil=True)
    def k_sum(a0, o0):
        acc1_c = np.empty(64, np.float32)
        for i0 in range(4):
            ba0 = i0 * 2048
            bo0 = i0 * 64
            for t in range(64):
                acc1_c[t] = np.float32(0.0)
            for j in range(32):
                for t in range(64):
                    x1 = a0[ba0 + j * 64 + t]
                    acc1_c[t] += x1
            for t in range(64):
                o0[bo0 + t] = acc1_c[t]
"""

from __future__ import annotations

import re

from .numba_codegen import (
    ACCUMULATE,
    NP_TYPE,
    Def,
    KernelSpec,
    initial_value,
    is_variable,
    kernel_header,
    outer_loops,
)

# Passes that accumulate read this many steps of the reduced dim per load and store of the accumulators
# (sum over dim 1 of [8, 128, 768]: 0.127 -> 0.070 ms one thread; PyTorch 0.118 ms).
UNROLL = 4


def emit_column_kernel(spec: KernelSpec, ranged: bool = False) -> str:
    """The @njit source of reduction `spec` whose `cols` is set (see `KernelSpec.cols`); a ranged kernel
    runs `count` iterations of the first outer loop, or without one, of the loop over t."""
    if spec.cols is None or not spec.reduction:
        raise ValueError(f"kernel {spec.name} is not a column reduction")
    arrays = {a.name: a for a in spec.arrays}
    lines = kernel_header(spec, ranged)
    indent, bases = outer_loops(spec, ranged, lines)
    cols = "count" if ranged and not spec.outer else str(spec.cols)
    loop_t = f"for t in range({cols}):"
    in_t, in_jt = indent + "    ", indent + "        "
    columns: dict[int, Def] = {}  # the Defs held in an array over t, in the order they are filled
    pairs: list[Def] = []  # max/min accumulators: two arrays over t, read from one and written to the other

    def address(name: str, j: str | None) -> str:
        *_, col_step, inner_step = arrays[name].strides
        terms = [] if bases[name] == "0" else [bases[name]]
        if j is not None and inner_step:
            terms.append(j if inner_step == 1 else f"{j} * {inner_step}")
        if col_step:
            terms.append("t" if col_step == 1 else f"t * {col_step}")
        return " + ".join(terms) or "0"

    def rhs(d: Def, j: str | None, copy: str = "") -> str:
        if d.expr.startswith("@"):
            return f"{d.expr[1:]}[{address(d.expr[1:], j)}]"
        full = [x.name for x in d.deps if x.full and is_variable(x.name)]
        return re.sub(rf"\b(?:{'|'.join(full)})\b", lambda m: m.group() + copy, d.expr) if copy and full else d.expr

    def fill(d: Def) -> None:
        """Emit, before the current pass, the loop over t that fills the array of row value `d`."""
        if id(d) in columns:
            return
        if d.reduce:
            raise AssertionError(f"reduction {d.name} used before its pass")
        deps = [x for x in d.deps if is_variable(x.name)]
        for x in deps:
            fill(x)
        columns[id(d)] = d
        lines.append(f"{indent}{loop_t}")
        lines.extend(f"{in_t}{x.name} = {x.name}_c[t]" for x in deps)
        lines.append(f"{in_t}{d.name}_c[t] = {rhs(d, None)}")

    def emit_full(d: Def, done: set[tuple[int, str]], body: list[str], j: str = "j", copy: str = "") -> None:
        """Append to `body` the lines computing `d` at step `j` of the reduced dim; `copy` suffixes the names
        of values that vary along it (one copy per unrolled step)."""
        key = (id(d), copy if d.full else "")
        if key in done or not is_variable(d.name):
            return
        done.add(key)
        if not d.full:
            fill(d)
            body.append(f"{in_jt}{d.name} = {d.name}_c[t]")
            return
        for dep in d.deps:
            emit_full(dep, done, body, j, copy)
        body.append(f"{in_jt}{d.name}{copy} = {rhs(d, j, copy)}")

    def select(kind: str, a: str, b: str) -> str:
        """max/min of `a` and `b` that is NaN where either is, as torch.amax/amin."""
        return f"{a} if ({a} {'>=' if kind == 'max' else '<='} {b}) | ({a} != {a}) else {b}"

    def emit_pass(reds: list[Def]) -> None:
        size = spec.inner
        rest = size % UNROLL
        blocks = [] if size < UNROLL else [(f"for j0 in range(0, {size - rest}, {UNROLL}):", f"j0 // {UNROLL}",
                                            ["j0", *(f"(j0 + {u})" for u in range(1, UNROLL))])]
        if rest:  # the steps after the unrolled ones continue the count of steps (for the alternating arrays)
            blocks.append((f"for j in range({size - rest}, {size}):", f"j - {size - rest - size // UNROLL}", ["j"]))
        for header, step, js in blocks:
            # The body first: it may fill row values, in loops that come before this one.
            body: list[str] = []
            swaps: list[str] = []
            done: set[tuple[int, str]] = set()
            for red in reds:
                values = []
                for u, j in enumerate(js):
                    copy = f"_{u}" if len(js) > 1 else ""
                    emit_full(red.deps[0], done, body, j, copy)
                    values.append(red.deps[0].name + copy)
                if red.reduce in ACCUMULATE:
                    op = ACCUMULATE[red.reduce][0]
                    total = values[0] if len(values) == 1 else f" {op} ".join(
                        f"({a} {op} {b})" for a, b in zip(values[::2], values[1::2], strict=True))
                    body.append(f"{in_jt}{red.name}_c[t] {op}= {total}")
                    continue
                while len(values) > 1:
                    names = [f"{red.name}_m{len(values)}_{k}" for k in range(len(values) // 2)]
                    body += [f"{in_jt}{n} = {select(red.reduce, a, b)}"
                             for n, a, b in zip(names, values[::2], values[1::2], strict=True)]
                    values = names
                # Updating one array in place, `acc[t] = acc[t] if ... else x` becomes a masked store, which
                # is microcoded on AVX2 (4x slower than the sum); alternating arrays makes every store whole.
                swaps += [f"{in_t}{red.name}_in = {red.name}_cc[({step}) % 2]",
                          f"{in_t}{red.name}_out = {red.name}_cc[1 - ({step}) % 2]"]
                body += [f"{in_jt}{red.name} = {red.name}_in[t]",
                         f"{in_jt}{red.name}_out[t] = {select(red.reduce, red.name, values[0])}"]
            lines.extend([f"{indent}{header}", *swaps, f"{in_t}{loop_t}", *body])
        steps = size // UNROLL + rest
        lines.extend(f"{indent}{red.name}_c = {red.name}_cc[{steps % 2}]" for red in reds if red in pairs)

    for level in sorted({d.level for d in spec.defs if d.reduce}):
        reds = [d for d in spec.defs if d.reduce and d.level == level]
        lines.append(f"{indent}{loop_t}")
        for red in reds:
            accumulates = red.reduce in ACCUMULATE
            target = f"{red.name}_c[t]" if accumulates else f"{red.name}_cc[0, t]"
            lines.append(f"{in_t}{target} = {initial_value(red)}")
            pairs += [] if accumulates else [red]
            columns[id(red)] = red
        emit_pass(reds)
    # Every row value before the first store, as in a row kernel.
    row_stores = [(a, d) for a, d in spec.stores if not d.full]
    for _, d in row_stores:
        if is_variable(d.name):
            fill(d)
    if row_stores:
        lines.append(f"{indent}{loop_t}")
        for array, d in row_stores:
            value = f"{d.name}_c[t]" if is_variable(d.name) else d.name
            lines.append(f"{in_t}{array.name}[{address(array.name, None)}] = {value}")
    full_stores = [(a, d) for a, d in spec.stores if d.full]
    if full_stores:
        body: list[str] = []
        done: set[tuple[int, str]] = set()
        for _, d in full_stores:
            emit_full(d, done, body)
        lines += [f"{indent}for j in range({spec.inner}):", f"{in_t}{loop_t}", *body]
        lines += [f"{in_jt}{a.name}[{address(a.name, 'j')}] = {d.name}" for a, d in full_stores]
    allocations = [f"    {d.name}_cc = np.empty((2, {cols}), {NP_TYPE[d.dtype]})" if d in pairs else
                   f"    {d.name}_c = np.empty({cols}, {NP_TYPE[d.dtype]})" for d in columns.values()]
    return "\n".join([*lines[:2], *allocations, *lines[2:]]) + "\n"
