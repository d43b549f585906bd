"""Python-backend models that the Triton stage copies into a model repository as `model.py`.

Each module is self-contained: it imports only the standard library, numpy, `tokenizers` or `onnxruntime`, and
`triton_python_backend_utils` (inside the server, lazily), never the workbench, because the server's Python
environment need not have the workbench installed. The workbench imports the pure helpers (`encode`,
`mean_pool`) to check, at export time, that the server computes exactly what the workbench computes.

- `tokenizer_model.py`: text -> the model's integer inputs, padded to a fixed length (a `<name>_tokenizer` model).
- `pooling_model.py`: token embeddings + attention mask -> mean-pooled, L2-normalised sentence embeddings.
- `bls_model.py`: text in, the task's outputs out: tokenizes a whole dynamic batch, groups it by padded length and
  calls the engine and the post-processing model through BLS (the `PaddingPolicy(batching="bls")` design).
- `onnxruntime_model.py`: a Python-based backend named `onnxruntime` that runs an ONNX model with onnxruntime on
  the CPU. Only for serving on machines without Triton's real onnxruntime backend (tests, CPU-only
  development); exported repositories never contain it.
- `openvino_model.py`: the same for `backend: "openvino"`: runs an OpenVINO IR (model.xml + model.bin) with the
  openvino package on the CPU, one request at a time.
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent
TOKENIZER_MODEL = FOLDER / "tokenizer_model.py"
POOLING_MODEL = FOLDER / "pooling_model.py"
LABELS_MODEL = FOLDER / "labels_model.py"
BLS_MODEL = FOLDER / "bls_model.py"
ONNXRUNTIME_BACKEND_MODEL = FOLDER / "onnxruntime_model.py"
OPENVINO_BACKEND_MODEL = FOLDER / "openvino_model.py"
