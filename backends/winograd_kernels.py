"""The Numba transforms of winograd.py's F(4x4, 3x3) convolution, compiled once and cached on disk.

`input_transform` writes V[k, c, tile] = (B^T d B)[k // 6, k % 6] for every 6x6 input tile d (tiles
overlap by 2, the plane is zero-padded); `output_transform` writes y[n, c] = A^T M A + bias, tile by tile,
cropped to the output's size. Tiles are numbered n, tile row, tile column.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# No nnan/ninf: a NaN or infinity in the input must reach the output. (It spreads over the 4x4 output
# tile it falls in, where a direct convolution confines it to the outputs whose window holds it.)
_FASTMATH = {"nsz", "arcp", "contract", "afn"}


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy", nogil=True)
def input_transform(x: np.ndarray, v: np.ndarray, pad_h: int, pad_w: int, tiles_h: int, tiles_w: int) -> None:
    """x: [N, C, H, W]; v: [36, C, N * tiles_h * tiles_w]."""
    n_batch, channels, height, width = x.shape
    tiles = tiles_h * tiles_w
    plane = np.zeros((4 * tiles_h + 2, 4 * tiles_w + 2), np.float32)
    rows = np.empty((36, tiles), np.float32)
    f2, f4, f5 = np.float32(2), np.float32(4), np.float32(5)
    rows_in = min(height, 4 * tiles_h + 2 - pad_h)
    cols_in = min(width, 4 * tiles_w + 2 - pad_w)
    for n in range(n_batch):
        for c in range(channels):
            for h in range(rows_in):
                for w in range(cols_in):
                    plane[pad_h + h, pad_w + w] = x[n, c, h, w]
            # Row transforms d B of each tile's 6 rows: rows[i * 6 + k, tile].
            for ty in range(tiles_h):
                for i in range(6):
                    line = plane[4 * ty + i]
                    for tx in range(tiles_w):
                        t = ty * tiles_w + tx
                        d0, d1, d2 = line[4 * tx], line[4 * tx + 1], line[4 * tx + 2]
                        d3, d4, d5 = line[4 * tx + 3], line[4 * tx + 4], line[4 * tx + 5]
                        rows[i * 6, t] = f4 * d0 - f5 * d2 + d4
                        rows[i * 6 + 1, t] = -f4 * d1 - f4 * d2 + d3 + d4
                        rows[i * 6 + 2, t] = f4 * d1 - f4 * d2 - d3 + d4
                        rows[i * 6 + 3, t] = -f2 * d1 - d2 + f2 * d3 + d4
                        rows[i * 6 + 4, t] = f2 * d1 - d2 - f2 * d3 + d4
                        rows[i * 6 + 5, t] = f4 * d1 - f5 * d3 + d5
            # Column transforms B^T (d B), along all tiles of the plane.
            for k in range(6):
                v0, v1, v2 = v[k, c], v[6 + k, c], v[12 + k, c]
                v3, v4, v5 = v[18 + k, c], v[24 + k, c], v[30 + k, c]
                r0, r1, r2 = rows[k], rows[6 + k], rows[12 + k]
                r3, r4, r5 = rows[18 + k], rows[24 + k], rows[30 + k]
                base = n * tiles
                for t in range(tiles):
                    a0, a1, a2, a3, a4, a5 = r0[t], r1[t], r2[t], r3[t], r4[t], r5[t]
                    v0[base + t] = f4 * a0 - f5 * a2 + a4
                    v1[base + t] = -f4 * a1 - f4 * a2 + a3 + a4
                    v2[base + t] = f4 * a1 - f4 * a2 - a3 + a4
                    v3[base + t] = -f2 * a1 - a2 + f2 * a3 + a4
                    v4[base + t] = f2 * a1 - a2 - f2 * a3 + a4
                    v5[base + t] = f4 * a1 - f5 * a3 + a5


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy", nogil=True)
def output_transform(m: np.ndarray, y: np.ndarray, bias: np.ndarray, tiles_h: int, tiles_w: int) -> None:
    """m: [36, C, N * tiles_h * tiles_w]; y: [N, C, H, W]; bias: [C]."""
    n_batch, channels, height, width = y.shape
    tiles = tiles_h * tiles_w
    cols = np.empty((24, tiles), np.float32)
    plane = np.empty((4 * tiles_h, 4 * tiles_w), np.float32)
    f2, f4, f8 = np.float32(2), np.float32(4), np.float32(8)
    for n in range(n_batch):
        for c in range(channels):
            b = bias[c]
            base = n * tiles
            # Column transforms A^T M, along all tiles: cols[a * 6 + j, tile].
            for j in range(6):
                m0, m1, m2 = m[j, c], m[6 + j, c], m[12 + j, c]
                m3, m4, m5 = m[18 + j, c], m[24 + j, c], m[30 + j, c]
                for t in range(tiles):
                    a0, a1, a2 = m0[base + t], m1[base + t], m2[base + t]
                    a3, a4, a5 = m3[base + t], m4[base + t], m5[base + t]
                    cols[j, t] = a0 + a1 + a2 + a3 + a4
                    cols[6 + j, t] = a1 - a2 + f2 * a3 - f2 * a4
                    cols[12 + j, t] = a1 + a2 + f4 * a3 + f4 * a4
                    cols[18 + j, t] = a1 - a2 + f8 * a3 - f8 * a4 + a5
            # Row transforms (A^T M) A into the tiles of the plane, then the plane cropped into y.
            for a in range(4):
                for ty in range(tiles_h):
                    line = plane[4 * ty + a]
                    for tx in range(tiles_w):
                        t = ty * tiles_w + tx
                        a0, a1, a2 = cols[a * 6, t], cols[a * 6 + 1, t], cols[a * 6 + 2, t]
                        a3, a4, a5 = cols[a * 6 + 3, t], cols[a * 6 + 4, t], cols[a * 6 + 5, t]
                        line[4 * tx] = a0 + a1 + a2 + a3 + a4 + b
                        line[4 * tx + 1] = a1 - a2 + f2 * a3 - f2 * a4 + b
                        line[4 * tx + 2] = a1 + a2 + f4 * a3 + f4 * a4 + b
                        line[4 * tx + 3] = a1 - a2 + f8 * a3 - f8 * a4 + a5 + b
            for h in range(height):
                for w in range(width):
                    y[n, c, h, w] = plane[h, w]
