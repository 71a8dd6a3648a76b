"""`onnx.backend` interface: run ONNX models with heteropass.

`HeteropassBackend.prepare(model)` imports the model (`import_onnx`), runs the pass pipeline
(`api.optimize`) and builds the executable. A model whose import needs the values of some graph
inputs (a Reshape whose shape is an input) is compiled at the first `run`, specialized on those
values; later runs with other values compile again (one executable per distinct value).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep, Device, DeviceType

from .api import CompileOptions, optimize
from .backends.executable import Executable
from .ir.onnx_importer import OnnxProgram, import_onnx, load_model
from .ir.onnx_lowering import OnnxImportError, to_numpy, to_torch


class HeteropassRep(BackendRep):
    """A prepared model: `run(inputs)` takes arrays in graph-input order (or a name -> array dict)
    and returns the outputs in ONNX output order with ONNX's element types."""

    def __init__(self, model: onnx.ModelProto, options: CompileOptions, fallback: str | None) -> None:
        self.model = model
        self.options = options
        self.fallback = fallback
        self.input_names = [v.name for v in model.graph.input
                            if v.name not in {t.name for t in model.graph.initializer}]
        self._compiled: dict[bytes, tuple[OnnxProgram, Executable]] = {}
        self.needs_values: tuple[str, ...] = ()
        try:
            self._compiled[b""] = self._compile({})
        except OnnxImportError as exc:
            if not exc.needs_values:
                raise
            self.needs_values = exc.needs_values

    @property
    def programs(self) -> list[OnnxProgram]:
        """The imported programs compiled so far (one per distinct value of the bound inputs)."""
        return [program for program, _ in self._compiled.values()]

    def _compile(self, bind: dict[str, np.ndarray]) -> tuple[OnnxProgram, Executable]:
        program = import_onnx(self.model, fallback=self.fallback, bind=bind)
        _, executable = optimize(program.graph, self.options)
        return program, executable

    def run(self, inputs: Sequence[Any] | Mapping[str, Any], **kwargs: Any) -> tuple[np.ndarray, ...]:
        if isinstance(inputs, Mapping):
            by_name = dict(inputs)
            self._check_names(by_name)
        else:
            inputs = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
            if len(inputs) != len(self.input_names):
                raise ValueError(f"the model takes {len(self.input_names)} inputs {self.input_names}, "
                                 f"got {len(inputs)}")
            by_name = dict(zip(self.input_names, inputs, strict=True))
        by_name = {name: self._coerce(name, value) for name, value in by_name.items()}
        program, executable = self._for_values(by_name)
        tensors = [to_torch(np.asarray(by_name[name])) for name in program.input_names]
        return tuple(to_numpy(t.contiguous()) for t in executable(*tensors))

    def _check_names(self, by_name: Mapping[str, Any]) -> None:
        """Inputs by name: every model input, nothing else. An initializer the graph also lists as an input
        is a constant here (folded at import), so a value for it is refused rather than ignored."""
        initializers = {t.name for t in self.model.graph.initializer}
        if overridden := sorted(set(by_name) & initializers):
            raise ValueError(f"{overridden} are initializers, which heteropass folds as constants; "
                             f"the model's inputs are {self.input_names}")
        if missing := [name for name in self.input_names if name not in by_name]:
            raise ValueError(f"missing input(s) {missing}; the model's inputs are {self.input_names}")
        if unknown := sorted(set(by_name) - set(self.input_names)):
            raise ValueError(f"unknown input(s) {unknown}; the model's inputs are {self.input_names}")

    def _coerce(self, name: str, value: Any) -> np.ndarray:
        """The input as an array of the model's element type (test data may hold objects or TensorProtos)."""
        if isinstance(value, onnx.TensorProto):
            value = onnx.numpy_helper.to_array(value)
        array = np.asarray(value)
        if array.dtype != object:
            return array
        info = next((v for v in self.model.graph.input if v.name == name), None)
        if info is None:
            return array
        return array.astype(onnx.helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type))

    def _for_values(self, by_name: dict[str, Any]) -> tuple[OnnxProgram, Executable]:
        bind: dict[str, np.ndarray] = {}
        needs = self.needs_values
        while True:
            bind.update((name, np.asarray(by_name[name])) for name in needs)
            key = b"".join(name.encode() + bind[name].tobytes() + str(bind[name].shape).encode()
                           for name in sorted(bind))
            if key in self._compiled:
                return self._compiled[key]
            try:
                self._compiled[key] = self._compile(bind)
                return self._compiled[key]
            except OnnxImportError as exc:
                if not exc.needs_values or set(exc.needs_values) <= set(bind):
                    raise
                needs = exc.needs_values


class HeteropassBackend(Backend):
    """The heteropass ONNX backend (CPU). `prepare` keyword arguments: `opt_level` (default 2) and
    `fallback` ("reference", "onnxruntime" or None: ops without a lowering rule are an error)."""

    @classmethod
    def is_compatible(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> bool:
        return cls.supports_device(device)

    @classmethod
    def prepare(cls, model: onnx.ModelProto | str | bytes, device: str = "CPU", **kwargs: Any) -> HeteropassRep:
        if not cls.supports_device(device):
            raise ValueError(f"heteropass runs ONNX models on CPU, not {device!r}")
        proto = load_model(model) if not isinstance(model, onnx.ModelProto) else model
        options = CompileOptions(opt_level=kwargs.get("opt_level", 2))
        return HeteropassRep(proto, options, kwargs.get("fallback"))

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU",
                  **kwargs: Any) -> tuple[np.ndarray, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Any, device: str = "CPU", outputs_info: Any = None,
                 **kwargs: Any) -> tuple[np.ndarray, ...]:
        """Run one node on `inputs` (arrays, in the node's input order)."""
        arrays = [np.asarray(a) for a in inputs]
        names = [name for name in node.input if name]
        value_infos = [onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
                       for name, a in zip(names, arrays, strict=True)]
        outputs = [onnx.helper.make_empty_tensor_value_info(name) for name in node.output if name]
        opset = kwargs.pop("opset_version", onnx.defs.onnx_opset_version())
        model = onnx.helper.make_model(onnx.helper.make_graph([node], "run_node", value_infos, outputs),
                                       opset_imports=[onnx.helper.make_opsetid("", opset)])
        return cls.prepare(model, device, **kwargs).run(arrays)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return Device(device).type == DeviceType.CPU


prepare = HeteropassBackend.prepare
run_model = HeteropassBackend.run_model
run_node = HeteropassBackend.run_node
supports_device = HeteropassBackend.supports_device

__all__ = ["HeteropassBackend", "HeteropassRep", "prepare", "run_model", "run_node", "supports_device"]
