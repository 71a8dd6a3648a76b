"""`torch.compile(..., backend="heteropass")`: graphs heteropass cannot import run eagerly, constants built in
forward and effectful ops import, and AOTAutograd gets a boxed function."""

from __future__ import annotations

import warnings

import pytest
import torch


def _compile(fn: object, **options: object) -> object:
    torch._dynamo.reset()
    return torch.compile(fn, backend="heteropass", dynamic=False, options=options or None)


def with_tensor_constants(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tensor([1.0, 2.0, 3.0]) + torch.tensor(0.5)


def test_tensor_constants_built_in_forward_become_graph_constants() -> None:
    x = torch.randn(2, 3)
    with torch.no_grad():
        torch.testing.assert_close(_compile(with_tensor_constants)(x), with_tensor_constants(x))


class Inverse(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.inv(x + 4 * torch.eye(4)) * 2


def test_effectful_linalg_op_runs_as_a_pytorch_call() -> None:
    x = torch.randn(4, 4)
    with pytest.warns(UserWarning, match=r"aten\.linalg_inv_ex"):
        actual = _compile(Inverse())(x)
    torch.testing.assert_close(actual, Inverse()(x))


def complex_abs(z: torch.Tensor) -> torch.Tensor:
    return (z * 2).abs()


def test_a_graph_that_cannot_be_imported_runs_eagerly_or_fails_when_strict() -> None:
    z = torch.randn(5, dtype=torch.complex64)
    with pytest.warns(UserWarning, match="heteropass cannot import this graph.*complex64.*running it eagerly"):
        actual = _compile(complex_abs)(z)
    torch.testing.assert_close(actual, complex_abs(z))
    with pytest.raises(Exception, match="complex64"):
        _compile(complex_abs, strict=True)(z)


def test_training_graph_gets_no_boxed_call_warning_and_matches_eager_gradients() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    x = torch.randn(3, 4)
    compiled = _compile(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled(x).sum().backward()
    assert not [w for w in caught if "boxed" in str(w.message)]
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x).sum().backward()
    for got, want in zip(grads, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(got, want)


class InverseThenLinear(torch.nn.Module):
    """An effect token (linalg's error check) leads the graph's inputs, before the parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.linalg.inv(x @ x.T + 8 * torch.eye(8)) @ self.linear(x) + z


def test_freezing_behind_an_effect_token_freezes_parameters_not_inputs() -> None:
    model, x = InverseThenLinear().eval(), torch.randn(8, 8)
    compiled = _compile(model, precision="int8-dynamic")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled(x, torch.zeros(8, 8))
        z = torch.full((8, 8), 100.0)
        torch.testing.assert_close(compiled(x, z), model(x, z), rtol=0.05, atol=0.5)


def test_a_backward_graph_takes_no_effect_tokens() -> None:
    model = torch.nn.Linear(3, 3)
    twin = torch.nn.Linear(3, 3)
    twin.load_state_dict(model.state_dict())

    def loss(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return (torch.linalg.inv(m(x) + 3 * torch.eye(3)).sum(-1) * x.sum()).sum()

    x = torch.randn(3, 3)
    loss(model, x).backward()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _compile(lambda x: loss(twin, x))(x).backward()
    assert not [w for w in caught if "cannot import this graph" in str(w.message)]
    torch.testing.assert_close(twin.weight.grad, model.weight.grad)


def test_int8_freezing_of_parameters_made_under_inference_mode() -> None:
    """Inference tensors keep no version counter: the frozen-parameter check skips them."""
    with torch.inference_mode():
        model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 10)).eval()
    x = torch.randn(8, 64)
    with torch.no_grad():
        torch.testing.assert_close(_compile(model, precision="int8-dynamic")(x), model(x), rtol=0.05, atol=0.05)
