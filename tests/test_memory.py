"""BufferPool: aligned, disjoint buffers in one arena, viewed as any dtype and shape."""

from __future__ import annotations

import pytest
import torch

from heteropass.backends.memory import BufferPool
from heteropass.ir import DType
from heteropass.passes.plan_memory import ALIGN


def test_buffers_are_aligned_and_disjoint() -> None:
    pool = BufferPool([100, 64, 8])
    assert pool.offsets == [0, 128, 192]
    assert pool.nbytes == 256
    views = [pool.view(0, DType.f32, (25,)), pool.view(1, torch.int64, (2, 4)), pool.view(2, DType.f64, ())]
    for i, view in enumerate(views):
        assert view.is_contiguous()
        assert (view.data_ptr() - pool.arena.data_ptr()) % ALIGN == 0
        view.fill_(i + 1)
    assert views[0].sum().item() == 25
    assert views[1].sum().item() == 16
    assert views[2].item() == 3


def test_one_buffer_seen_as_two_dtypes_shares_bytes() -> None:
    pool = BufferPool([64])
    as_float = pool.view(0, DType.f32, (4, 4))
    as_int = pool.view(0, DType.i32, (16,))
    as_float.fill_(1.0)
    assert as_int[0].item() == 0x3F800000  # the bit pattern of 1.0f
    assert pool.owns(as_float) and pool.owns(as_int[3:])
    assert not pool.owns(torch.ones(4))


def test_a_view_larger_than_its_buffer_is_refused() -> None:
    pool = BufferPool([64, 64])
    with pytest.raises(ValueError, match=r"buffer 0 holds 64 bytes; torch.float32\[4, 5\] needs 80"):
        pool.view(0, DType.f32, (4, 5))

