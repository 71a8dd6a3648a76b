"""transformers architectures with tiny random configs: each imports without opaque PyTorch calls, from
torch.export's graph as is (no decomposition re-trace; BART writes into slices of a tensor), and the
compiled module matches eager."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
import transformers as T

import heteropass as hp

_TEXT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
         "vocab_size": 100}
_VISION = {k: v for k, v in _TEXT.items() if k != "vocab_size"}


def _ids() -> torch.Tensor:
    return torch.randint(0, 100, (2, 10))


def _image() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32)


# name: (model factory, input factory)
_MODELS: dict[str, tuple[Callable[[], torch.nn.Module], Callable[[], torch.Tensor]]] = {
    "llama": (lambda: T.LlamaModel(T.LlamaConfig(**_TEXT, num_key_value_heads=1, use_cache=False)), _ids),
    "qwen2": (lambda: T.Qwen2Model(T.Qwen2Config(**_TEXT, num_key_value_heads=1, use_cache=False)), _ids),
    "phi": (lambda: T.PhiModel(T.PhiConfig(**_TEXT, use_cache=False)), _ids),
    "gpt_neox": (lambda: T.GPTNeoXModel(T.GPTNeoXConfig(**_TEXT, use_cache=False)), _ids),
    "opt": (lambda: T.OPTModel(T.OPTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, ffn_dim=64,
                                           vocab_size=100, word_embed_proj_dim=32, use_cache=False)), _ids),
    "roberta": (lambda: T.RobertaModel(T.RobertaConfig(**_TEXT)), _ids),
    "albert": (lambda: T.AlbertModel(T.AlbertConfig(**_TEXT, embedding_size=16)), _ids),
    "t5_encoder": (lambda: T.T5EncoderModel(T.T5Config(d_model=32, num_layers=1, num_heads=2, d_ff=64, d_kv=16,
                                                       vocab_size=100)), _ids),
    "bart": (lambda: T.BartModel(T.BartConfig(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                                              decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                                              vocab_size=100, use_cache=False)), _ids),
    "vit": (lambda: T.ViTModel(T.ViTConfig(**_VISION, image_size=32, patch_size=8)), _image),
    "convnext": (lambda: T.ConvNextModel(T.ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1])),
                 _image),
    "resnet": (lambda: T.ResNetModel(T.ResNetConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                                                    embedding_size=8)), _image),
    "segformer": (lambda: T.SegformerModel(T.SegformerConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                                                             decoder_hidden_size=16, num_attention_heads=[1, 1, 2, 2])),
                  _image),
    "wav2vec2": (lambda: T.Wav2Vec2Model(T.Wav2Vec2Config(**_VISION, conv_dim=(16, 16), conv_stride=(5, 2),
                                                          conv_kernel=(10, 3), num_conv_pos_embeddings=16,
                                                          num_conv_pos_embedding_groups=2)),
                 lambda: torch.randn(2, 400)),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(_MODELS))
def test_architecture_imports_whole_and_matches_eager(name: str, decompositions: list[int]) -> None:
    make, inputs = _MODELS[name]
    torch.manual_seed(0)
    model = make().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = hp.compile(model, (inputs(),), strict=True)
    assert not decompositions
    x = inputs()
    with torch.no_grad():
        want, got = model(x), compiled(x)
    for w, g in zip(want.to_tuple(), got.to_tuple(), strict=True):
        scale = w.abs().max().clamp_min(1e-30)
        assert ((g - w).abs().max() / scale).item() < 1e-5
