"""The runtime side of memory planning: one preallocated byte arena that holds every planned buffer.

Allocating a fresh large tensor costs more than the arithmetic on it (first-touch page faults), so an
executable allocates its buffers once, at build time, and its kernels write into typed views of them on
every call. The arena is touched (zeroed) when it is made, so the first call pays no page faults either.

A pool belongs to one call at a time: `Executable` gives each concurrent (or re-entrant) call its own
instance of the module, with its own pool.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..ir import DType
from ..passes.plan_memory import ALIGN


class BufferPool:
    """Buffers of the given sizes in bytes, laid out at `ALIGN`-byte offsets of one uint8 arena."""

    def __init__(self, buffer_bytes: Sequence[int]) -> None:
        self.offsets: list[int] = []
        total = 0
        for size in buffer_bytes:
            self.offsets.append(total)
            total += -(-size // ALIGN) * ALIGN
        self.sizes = list(buffer_bytes)
        self.arena = torch.zeros(total, dtype=torch.uint8)

    @property
    def nbytes(self) -> int:
        return self.arena.numel()

    def view(self, buffer: int, dtype: DType | torch.dtype, shape: Sequence[int]) -> torch.Tensor:
        """A contiguous tensor of `dtype` and `shape` over the start of `buffer`'s bytes."""
        dtype = dtype.torch if isinstance(dtype, DType) else dtype
        count = 1
        for size in shape:
            count *= size
        need = count * dtype.itemsize
        if need > self.sizes[buffer]:
            raise ValueError(f"buffer {buffer} holds {self.sizes[buffer]} bytes; {dtype}{list(shape)} needs {need}")
        start = self.offsets[buffer]
        return self.arena[start:start + need].view(dtype).view(tuple(shape))

    def owns(self, tensor: torch.Tensor) -> bool:
        """Whether `tensor` lives in this pool's memory."""
        return self.nbytes > 0 and tensor.untyped_storage().data_ptr() == self.arena.untyped_storage().data_ptr()

    def __repr__(self) -> str:
        return f"BufferPool({len(self.sizes)} buffers, {self.nbytes} bytes)"
