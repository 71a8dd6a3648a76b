"""Backends: code generation and execution of partitions."""

from __future__ import annotations

from collections.abc import Sequence

from .base import Backend


def backend_registry() -> dict[str, type[Backend]]:
    """Every backend class by name."""
    from .numba_backend import NumbaBackend
    from .reference import ReferenceBackend

    return {cls.name: cls for cls in (NumbaBackend, ReferenceBackend)}


def resolve_backends(backends: Sequence[Backend | str]) -> list[Backend]:
    """Backends in priority order, given as instances or names; the reference backend is appended
    as the fallback that runs anything when the list does not end with it."""
    registry = backend_registry()
    resolved: list[Backend] = []
    for backend in backends:
        if isinstance(backend, str):
            if backend not in registry:
                raise ValueError(f"unknown backend {backend!r}; known: {sorted(registry)}")
            backend = registry[backend]()
        resolved.append(backend)
    if not resolved or resolved[-1].name != "reference":
        resolved.append(registry["reference"]())
    return resolved
