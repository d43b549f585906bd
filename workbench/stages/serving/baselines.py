"""The server a data scientist would otherwise write: FastAPI + uvicorn, one POST endpoint, on loopback.

    POST /embed  {"texts": ["...", ...]}  ->  {"embeddings": [[...], ...]}
    GET  /health                          ->  {"status": "ok"}

Two engines behind the same app, so that server overhead and engine speed are told apart:

- "pytorch": the Hugging Face model in PyTorch eager mode (transformers' default attention), as a notebook
  would load it;
- "onnxruntime": the chosen ONNX engine in onnxruntime (default session options).

Both tokenize each request on its own to its longest text (`padding=True`, truncated to `max_length`), take the
attention-mask-aware mean of `last_hidden_state` and L2-normalise it, in a plain `def` endpoint that FastAPI
runs in its thread pool: what the FastAPI documentation recommends for blocking code, with no batching across
requests. One uvicorn worker.

`FastAPIServer` starts one as a subprocess (`python -m workbench.stages.serving.baselines ...`) on a free port
of 127.0.0.1, waits until /health answers (bounded), and stops it with SIGTERM, then SIGKILL to its process
group. This module imports fastapi, uvicorn and the engine only in the subprocess.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.errors import ConfigError, MissingDependency, ServingError

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from typing_extensions import Self

BASELINE_ENGINES = ("pytorch", "onnxruntime")
EMBED_PATH = "/embed"
HEALTH_PATH = "/health"
_INSTALL_FIX = 'pip install "inference-workbench[serving]" (from a checkout: pip install -e ".[serving]")'


def create_app(
    engine: str,
    model: str | os.PathLike[str],
    tokenizer_dir: str | os.PathLike[str],
    *,
    max_length: int = 128,
    threads: int | None = None,
) -> Any:
    """The FastAPI app: one embedding endpoint over `engine` ("pytorch": a Hugging Face model folder;
    "onnxruntime": an .onnx file). Loads the model and tokenizer now."""
    import numpy as np
    from fastapi import Body, FastAPI, HTTPException

    from workbench.models import load_model

    tokenizer = load_model(tokenizer_dir).load_tokenizer()
    if engine == "pytorch":
        from workbench.engines.pytorch import PyTorchRunner

        # transformers' default attention, as a data scientist's AutoModel.from_pretrained(path) loads it
        source: Any = load_model(model, attn_implementation="sdpa")
        if not hasattr(source, "load_module"):
            raise ConfigError(
                f"The PyTorch baseline needs a Hugging Face model folder, not {model}.",
                fix="pass the model folder the ONNX engine was exported from",
            )
        runner: Any = PyTorchRunner(source.load_module(), threads=threads)
    elif engine == "onnxruntime":
        from workbench.engines.onnxruntime import OnnxRuntimeRunner

        runner = OnnxRuntimeRunner(model, intra_op_threads=threads, output_names=["last_hidden_state"])
    else:
        raise ConfigError(f"engine {engine!r} is not one of {list(BASELINE_ENGINES)}.")
    runner.__enter__()
    input_names = list(runner.input_specs()) if engine == "onnxruntime" else None

    app = FastAPI(title=f"embeddings ({engine})")

    @app.get(HEALTH_PATH)
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post(EMBED_PATH)
    def embed(texts: list[str] = Body(..., embed=True)):  # noqa: B008 - FastAPI's idiom, as tutorials write it
        if not texts:
            raise HTTPException(status_code=422, detail="texts is empty")
        batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
        feeds = {k: np.asarray(v, dtype=np.int64) for k, v in batch.items() if input_names is None or k in input_names}
        hidden = runner.infer(feeds)["last_hidden_state"]
        mask = feeds["attention_mask"][..., None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return {"embeddings": pooled.tolist()}

    return app


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FastAPIServer:
    """A FastAPI + uvicorn embedding server in a subprocess on 127.0.0.1, as a context manager.

    Args:
        engine: "pytorch" or "onnxruntime".
        model: A Hugging Face model folder ("pytorch") or an .onnx file ("onnxruntime").
        tokenizer_dir: The tokenizer folder (the Hugging Face model folder).
        max_length: Texts are truncated to this many tokens.
        threads: Intra-op threads of the engine; None: its default (all cores).
        startup_timeout_s: Longest wait for /health.
        stop_timeout_s: After SIGTERM, how long it may take to exit before its process group is killed.

    Attributes:
        port: Its port, once started.
    """

    def __init__(
        self,
        engine: str,
        model: str | os.PathLike[str],
        tokenizer_dir: str | os.PathLike[str],
        *,
        max_length: int = 128,
        threads: int | None = None,
        startup_timeout_s: float = 120.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        if engine not in BASELINE_ENGINES:
            raise ConfigError(f"FastAPIServer engine {engine!r} is not one of {list(BASELINE_ENGINES)}.")
        self.engine = engine
        self.model = Path(model)
        self.tokenizer_dir = Path(tokenizer_dir)
        self.max_length = int(max_length)
        self.threads = threads
        self.startup_timeout_s = float(startup_timeout_s)
        self.stop_timeout_s = float(stop_timeout_s)
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def url(self) -> str:
        """The embedding endpoint, http://127.0.0.1:PORT/embed."""
        if self._process is None or self.port is None:
            raise ServingError("The FastAPI server is not running.", fix="use it inside `with FastAPIServer(...):`")
        return f"http://127.0.0.1:{self.port}{EMBED_PATH}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, max_chars: int = 3000) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode("utf-8", errors="replace")[-max_chars:]

    def start(self) -> FastAPIServer:
        """Start the server and wait until /health answers."""
        import importlib.util

        missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
        if missing:
            raise MissingDependency(f"The FastAPI baseline needs {missing}, which are not installed.", fix=_INSTALL_FIX)
        if self._process is not None:
            raise ServingError("This FastAPIServer was already started.", fix="use a new FastAPIServer")
        if not self.model.exists():
            raise ServingError(f"The model {self.model} does not exist.", fix="pass the model the server should load")
        self.port = _free_port()
        command = [
            sys.executable,
            "-m",
            "workbench.stages.serving.baselines",
            "--engine",
            self.engine,
            "--model",
            str(self.model),
            "--tokenizer",
            str(self.tokenizer_dir),
            "--port",
            str(self.port),
            "--max-length",
            str(self.max_length),
        ]
        if self.threads is not None:
            command += ["--threads", str(self.threads)]
        self._log = tempfile.TemporaryFile(prefix="workbench-fastapi-")  # noqa: SIM115 - open while it runs
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._process is not None
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ServingError(
                    f"The FastAPI server ({self.engine}) exited with code {self._process.returncode} while "
                    f"starting:\n{self.log_tail()}",
                    fix="read its log above",
                )
            try:
                with opener.open(f"http://127.0.0.1:{self.port}{HEALTH_PATH}", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise ServingError(
            f"The FastAPI server ({self.engine}) was not ready within {self.startup_timeout_s:.0f} s:"
            f"\n{self.log_tail()}",
            fix="raise startup_timeout_s, or read its log above",
        )

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to its process group after `stop_timeout_s`. Safe to call twice."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=self.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(process.pid, signal.SIGKILL)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        process.wait(timeout=5)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # anything it left in its group
        if self._log is not None:
            self._final_log = self.log_tail()
            self._log.close()
            self._log = None


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A FastAPI + uvicorn embedding server on 127.0.0.1.")
    parser.add_argument("--engine", choices=BASELINE_ENGINES, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    import uvicorn

    app = create_app(args.engine, args.model, args.tokenizer, max_length=args.max_length, threads=args.threads)
    print(json.dumps({"engine": args.engine, "port": args.port}), flush=True)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
