"""What the bench scripts do before they measure: fix the environment OpenMP reads, check the names asked for.

Standard library only, so that a script can call `restart_with_environment` before `import torch`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence


def restart_with_environment(variables: Mapping[str, str], *, override: bool = True) -> None:
    """Re-execute the running script with `variables` in its environment unless they are there already
    (with `override=False`, a variable the caller set keeps its value). libgomp reads OMP_* once, when it
    loads with `import torch`: setting them in `os.environ` afterwards has no effect."""
    wanted = {k: v if override else os.environ.get(k, v) for k, v in variables.items()}
    if all(os.environ.get(k) == v for k, v in wanted.items()):
        return
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **wanted})


def choose(parser: argparse.ArgumentParser, option: str, text: str, valid: Sequence[str]) -> list[str]:
    """The comma-separated names of `text` in the order given (all of `valid` when it is empty); a name not
    in `valid` is a command-line error that names it and lists the valid ones."""
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip())) or list(valid)
    unknown = [name for name in names if name not in valid]
    if unknown:
        parser.error(f"{option}: unknown {', '.join(map(repr, unknown))}; valid: {', '.join(valid)}")
    return names
