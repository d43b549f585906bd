"""A stand-in for Triton's `triton_python_backend_utils`, to run the exported Python models' `execute` in-process.

Only what the workbench's models use: input tensors by name, `Tensor`, `InferenceResponse` with an optional
`TritonError`, `TritonModelException` and `triton_string_to_numpy`. It records every TritonError it makes, so a
test can see whether responses share one error object (which crashes the real server's Python backend).
"""

from __future__ import annotations

import types
from typing import Any

import numpy as np

_NUMPY = {
    "TYPE_BOOL": np.bool_,
    "TYPE_UINT8": np.uint8,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}


def make_module() -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    module.errors = []  # type: ignore[attr-defined]

    class TritonError:
        def __init__(self, message: str) -> None:
            self._message = message
            module.errors.append(self)  # type: ignore[attr-defined]

        def message(self) -> str:
            return self._message

    class TritonModelException(Exception):
        pass

    class Tensor:
        def __init__(self, name: str, array: Any) -> None:
            self._name, self._array = name, np.asarray(array)

        def name(self) -> str:
            return self._name

        def as_numpy(self) -> np.ndarray:
            return self._array

    class InferenceResponse:
        def __init__(self, output_tensors: list[Any], error: Any = None) -> None:
            self.output_tensors_list, self.error = list(output_tensors), error

        def output_tensors(self) -> list[Any]:
            return self.output_tensors_list

        def has_error(self) -> bool:
            return self.error is not None

    class InferenceRequest:
        """Not Triton's class: a test's request, input name -> array."""

        def __init__(self, **inputs: Any) -> None:
            self.inputs = {name: Tensor(name, value) for name, value in inputs.items()}

    def get_input_tensor_by_name(request: Any, name: str) -> Any:
        return request.inputs.get(name)

    module.TritonError = TritonError  # type: ignore[attr-defined]
    module.TritonModelException = TritonModelException  # type: ignore[attr-defined]
    module.Tensor = Tensor  # type: ignore[attr-defined]
    module.InferenceResponse = InferenceResponse  # type: ignore[attr-defined]
    module.InferenceRequest = InferenceRequest  # type: ignore[attr-defined]
    module.get_input_tensor_by_name = get_input_tensor_by_name  # type: ignore[attr-defined]
    module.triton_string_to_numpy = lambda name: _NUMPY[name]  # type: ignore[attr-defined]
    return module
