"""The decode-step models (testing/decode_models.py): faithful to a transformers prefill + decode, and
compiled by heteropass to the eager result at fp32 and to close next-token logits with int8 weights."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import heteropass as hp
from heteropass.passes.precision_config import measure_error
from heteropass.testing import decode_models

PAST = 12
SMALL: dict[str, Callable[[], decode_models.DecodeStep]] = {
    "gpt2": lambda: decode_models.gpt2_decode(n_layer=2, n_embd=64, n_head=4, vocab_size=512, n_positions=64),
    "llama": lambda: decode_models.llama_decode(n_layer=2, hidden=64, intermediate=176, n_head=4, n_kv_head=2,
                                                vocab_size=512, max_positions=64),
}


@pytest.fixture(scope="module", params=sorted(SMALL))
def model(request: pytest.FixtureRequest) -> decode_models.DecodeStep:
    return SMALL[request.param]()


def test_step_continues_a_prefill(model: decode_models.DecodeStep) -> None:
    """With the past of a real prefill, the step's logits and new keys/values are the full forward's last position."""
    ids = torch.randint(0, model.vocab_size, (1, PAST + 1), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model.lm(input_ids=ids, use_cache=True)
        prefill = model.lm(input_ids=ids[:, :-1], use_cache=True).cache.layers
        out = model(ids[:, -1:], torch.tensor([[PAST]]), *(x.keys for x in prefill), *(x.values for x in prefill))
    n = model.n_layer
    assert len(out) == 1 + 2 * n
    torch.testing.assert_close(out[0], full.logits[:, -1:], rtol=1e-4, atol=1e-5)
    for layer, key, value in zip(full.cache.layers, out[1:1 + n], out[1 + n:], strict=True):
        assert key.shape == (1, model.kv_heads, 1, model.head_dim)
        torch.testing.assert_close(key, layer.keys[:, :, -1:], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(value, layer.values[:, :, -1:], rtol=1e-4, atol=1e-5)


def test_wrong_number_of_past_tensors_is_an_error(model: decode_models.DecodeStep) -> None:
    token, position, *past = decode_models.decode_inputs(model, past=PAST)
    with pytest.raises(ValueError, match=f"expected {2 * model.n_layer} past tensors"):
        model(token, position, *past[:-1])


def test_compiled_fp32_matches_eager(model: decode_models.DecodeStep) -> None:
    compiled = hp.compile(model, decode_models.decode_inputs(model, past=PAST), backends=("numba", "reference"))
    fresh = decode_models.decode_inputs(model, past=PAST, seed=7)
    with torch.no_grad():
        expected = model(*fresh)
    actual = compiled(*fresh)
    assert not any(node.op == "opaque" for node in compiled.graph)
    for a, e in zip(actual, expected, strict=True):
        assert a.shape == e.shape and a.dtype == e.dtype
        assert float((a - e).abs().max() / e.abs().max()) <= 1e-5


def test_int8_weight_keeps_next_token_logits(model: decode_models.DecodeStep,
                                             record_property: pytest.RecordProperty) -> None:
    inputs = decode_models.decode_inputs(model, past=PAST)
    compiled = hp.compile(model, inputs, precision="int8-weight", calibration=[inputs],
                          backends=("numba", "reference"))
    fresh = decode_models.decode_inputs(model, past=PAST, seed=7)
    with torch.no_grad():
        expected = model(*fresh)
    logits = compiled(*fresh)[0].float()
    error = measure_error([expected[0]], [logits])
    record_property("summary", f"decode {type(model.lm).__name__} int8-weight next-token logits: {error}")
    assert error.sqnr_db >= 30.0 and error.max_rel <= 0.05
    top = expected[0].flatten().topk(5).indices
    assert int(logits.flatten().argmax()) in top.tolist()
    assert compiled.accuracy is not None and compiled.accuracy.cosine > 0.999
