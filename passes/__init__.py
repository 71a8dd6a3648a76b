"""Passes over the IR and the pass manager that runs them."""

from .base import Pass, PassContext, PassResult

__all__ = ["Pass", "PassContext", "PassResult"]
