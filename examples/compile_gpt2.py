"""Compile GPT-2 transformer blocks with heteropass: our own GPT-2-style model and, when
`transformers` is installed, a 2-layer GPT2Model with random weights."""

import importlib.util

from common import run_example

from heteropass.testing import models

if __name__ == "__main__":
    run_example("gpt2_style", models.gpt2_style(use_sdpa=True), models.gpt2_style_inputs(batch=2, seq=32))
    if importlib.util.find_spec("transformers") is not None:
        run_example("hf_gpt2", models.hf_gpt2(n_layer=2), models.hf_gpt2_inputs(batch=1, seq=64))
