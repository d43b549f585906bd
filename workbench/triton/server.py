"""Run a real Triton Inference Server on this machine, on loopback, to check an exported model repository.

The server is the `tritonserver` binary (2.51) that the `nvidia-pytriton` wheel ships, with its Python backend.
That wheel has no onnxruntime backend, so the server gets a backend folder of its own, built in a temporary
folder: a copy of the Python backend with the stub for the running Python, and a Python-based backend named
`onnxruntime` (`workbench/triton/python_models/onnxruntime_model.py`) that runs ONNX models with onnxruntime on
the CPU. Triton resolves `backend: "onnxruntime"` to it, so an exported `config.pbtxt` is served exactly as a GPU
deployment with the real backend reads it (execution accelerators such as TensorRT are ignored on the CPU). A
second one named `openvino` (`openvino_model.py`) does the same for OpenVINO IR and `backend: "openvino"`.

The server listens on 127.0.0.1 only, on free ports, with explicit model control (nothing loads until
:meth:`TritonServer.load`), no metrics endpoint unless asked for (`metrics=True`: Prometheus metrics on a
third loopback port, for load tests), no pinned or CUDA memory pools, and auto-completion of configs
turned off, so a repository that loads here has complete configs. Its log goes to a temporary file whose tail
is part of every error. Every wait is bounded. Stopping sends SIGTERM to the server (which unloads its models
and ends its Python-backend stubs) and, after `stop_timeout_s`, SIGKILL to its whole process group.

    with TritonServer("runs/x/triton_repository") as server:
        server.load("minilm_ensemble")
        result = server.client.infer("minilm_ensemble", inputs)

A load that fails raises :class:`~workbench.errors.TritonServerError` with the server's own message (for
example "ensemble tensor ids is mapped from non-existing output IDZ in model tokenizer", or "has kind KIND_GPU
but no GPUs are available").
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from workbench._lazy import require
from workbench.errors import MissingDependency, TritonServerError

_INSTALL_FIX = 'pip install "inference-workbench[triton]" (from a checkout: pip install -e ".[triton]")'
_LOG_TAIL_CHARS = 4000
_ERROR_LOG_LINES = 25
_ERROR_LOG_LINE_CHARS = 400
#: Log lines worth showing even when they are not among the last: Triton's error lines, option errors.
_ERROR_LINE = re.compile(r"^E\d{4} |unrecognized option|^error|\berror: ", re.IGNORECASE)
_PORT_RETRIES = 3
_SHM_FOLDER = "/dev/shm"


def _pytriton_server_dir() -> Path:
    """`<site-packages>/pytriton/tritonserver`, found without importing pytriton (which imports a lot)."""
    try:
        spec = importlib.util.find_spec("pytriton")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency(
            "Running a Triton server needs the Python package 'nvidia-pytriton' (it ships the tritonserver "
            "binary and its Python backend), which is not installed.",
            fix=_INSTALL_FIX,
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (folder / "bin" / "tritonserver").is_file():
        raise MissingDependency(
            f"The installed nvidia-pytriton has no tritonserver binary under {folder / 'bin'}.",
            fix=f"reinstall it: pip install --force-reinstall nvidia-pytriton; or {_INSTALL_FIX}",
        )
    return folder


def _free_ports(count: int) -> list[int]:
    """`count` distinct ports that are free on 127.0.0.1 right now (the sockets stay open until all are found)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def copy_for_cpu(repository: str | os.PathLike[str], destination: str | os.PathLike[str]) -> list[str]:
    """Copy a model repository, turning GPU instance groups into CPU ones, to load a GPU export on a CPU machine.

    The exported repository keeps what its author chose; only the copy changes. Every config.pbtxt is parsed
    strictly and written back only where an instance group had kind KIND_GPU (its `gpus` list is dropped too).
    GPU execution accelerators are left in place: CPU instances ignore them.

    Returns:
        The names of the models whose configs were rewritten.
    """
    from workbench.triton.config import (
        CONFIG_FILENAME,
        parse_model_config,
        render_model_config,
    )

    pb2 = require("tritonclient.grpc.model_config_pb2", purpose="Rewriting Triton configs", extra="triton")
    source, target = Path(repository), Path(destination)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".*"))
    rewritten = []
    for config_path in sorted(target.glob(f"*/{CONFIG_FILENAME}")):
        cfg = parse_model_config(config_path.read_text(encoding="utf-8"))
        changed = False
        for group in cfg.instance_group:
            if group.kind == pb2.ModelInstanceGroup.KIND_GPU:
                group.kind = pb2.ModelInstanceGroup.KIND_CPU
                del group.gpus[:]
                changed = True
        if changed:
            config_path.write_text(render_model_config(cfg), encoding="utf-8")
            rewritten.append(config_path.parent.name)
    return rewritten


def _kill_group(pgid: int, sig: int) -> bool:
    """Send `sig` to a process group; False if the group no longer exists."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # the id was reused by someone else's group: not ours to signal
        return False


class TritonServer:
    """A `tritonserver` process serving `repository` on 127.0.0.1, as a context manager.

    Args:
        repository: The model repository.
        models: Models to load right after the server is ready (each as :meth:`load` does).
        startup_timeout_s: Longest wait for `/v2/health/ready`.
        load_timeout_s: Longest wait for one model load (and for any request through :attr:`client`).
        stop_timeout_s: After SIGTERM, how long the server may take to exit before its process group is killed.
        log_verbose: Triton's `--log-verbose` level (0: info, warnings and errors only).
        onnxruntime_backend: Provide the Python-based `onnxruntime` backend (for `backend: "onnxruntime"`).
        openvino_backend: Provide the Python-based `openvino` backend (for `backend: "openvino"`).
        extra_args: More `tritonserver` command-line arguments.
        metrics: Serve Prometheus metrics (`/metrics`) on 127.0.0.1 too (CPU and GPU metrics off), every
            `metrics_interval_ms`.
        metrics_interval_ms: How often the server refreshes its metrics.

    Attributes:
        http_port, grpc_port: The ports it listens on (127.0.0.1), once started.
        metrics_port: The metrics port (127.0.0.1), once started with `metrics=True`; else None.
    """

    def __init__(
        self,
        repository: str | os.PathLike[str],
        *,
        models: tuple[str, ...] | list[str] = (),
        startup_timeout_s: float = 60.0,
        load_timeout_s: float = 120.0,
        stop_timeout_s: float = 15.0,
        log_verbose: int = 0,
        onnxruntime_backend: bool = True,
        openvino_backend: bool = True,
        extra_args: tuple[str, ...] | list[str] = (),
        metrics: bool = False,
        metrics_interval_ms: int = 1000,
    ) -> None:
        self.repository = Path(repository).resolve()
        self.models = tuple(models)
        self.startup_timeout_s = float(startup_timeout_s)
        self.load_timeout_s = float(load_timeout_s)
        self.stop_timeout_s = float(stop_timeout_s)
        self.log_verbose = int(log_verbose)
        self.onnxruntime_backend = onnxruntime_backend
        self.openvino_backend = openvino_backend
        self.extra_args = tuple(extra_args)
        self.metrics = bool(metrics)
        self.metrics_interval_ms = int(metrics_interval_ms)
        self.http_port: int | None = None
        self.grpc_port: int | None = None
        self.metrics_port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._log_path: Path | None = None
        self._final_log = ""
        self._client: Any = None
        self._clients: list[Any] = []
        self._shm_prefix = ""

    # ---------------------------------------------------------------------------------------------- state

    @property
    def url(self) -> str:
        """`127.0.0.1:PORT` of the HTTP endpoint (what tritonclient.http takes)."""
        self._require_running()
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        self._require_running()
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """`http://127.0.0.1:PORT/metrics` (needs `metrics=True`)."""
        self._require_running()
        if self.metrics_port is None:
            raise TritonServerError(
                "This Triton server was started without metrics.", fix="start it with TritonServer(..., metrics=True)"
            )
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def log_path(self) -> Path | None:
        """The server's log file while it runs (removed on stop; :meth:`log_tail` still works afterwards)."""
        return self._log_path

    def log_tail(self, max_chars: int = _LOG_TAIL_CHARS) -> str:
        """The last `max_chars` characters of the server's log."""
        if self._log_path is not None and self._log_path.is_file():
            with open(self._log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - max_chars))
                return f.read().decode("utf-8", errors="replace")
        return self._final_log[-max_chars:]

    def _require_running(self) -> None:
        if not self.running:
            raise TritonServerError(
                "The Triton server is not running." + self._log_section(),
                fix="use the server inside `with TritonServer(repository) as server:` (or call start())",
            )

    def _log_section(self, lines: int = _ERROR_LOG_LINES) -> str:
        """The end of the log for an error message: its last `lines` lines, padding squeezed out of tables."""
        text = self.log_tail(64 * _LOG_TAIL_CHARS)
        tail = [
            re.sub(r"-{8,}", "---", re.sub(r" {2,}", " ", line.rstrip()))[:_ERROR_LOG_LINE_CHARS]
            for line in text.splitlines()
            if line.strip()
        ]
        if not tail:
            return ""
        last = tail[-lines:]
        # Errors scrolled out of the last lines (a usage text after a bad option, say) are shown first.
        earlier = [line for line in tail[:-lines] if _ERROR_LINE.search(line)][-10:]
        shown = ("\n  Server errors:\n    " + "\n    ".join(earlier)) if earlier else ""
        return shown + "\n  Server log (last lines):\n    " + "\n    ".join(last)

    # ------------------------------------------------------------------------------------------- start/stop

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> TritonServer:
        """Start the server and wait until it is ready; then load `models`."""
        if self._process is not None:
            raise TritonServerError("This TritonServer was already started.", fix="use a new TritonServer")
        require("tritonclient.http", purpose="Talking to a Triton server", extra="triton")
        server_dir = _pytriton_server_dir()
        if not self.repository.is_dir():
            raise TritonServerError(
                f"The model repository {self.repository} is not a folder.",
                fix="pass the folder written by export_triton() or export_triton_ensemble()",
            )
        self._workdir = Path(tempfile.mkdtemp(prefix="workbench-tritonserver-"))
        try:
            backends = self._build_backends(server_dir, self._workdir / "backends")
            env = self._environment(server_dir)
            for attempt in range(_PORT_RETRIES):
                ports = _free_ports(3 if self.metrics else 2)
                self.http_port, self.grpc_port = ports[:2]
                self.metrics_port = ports[2] if self.metrics else None
                self._log_path = self._workdir / f"tritonserver-{attempt}.log"
                self._launch(server_dir, backends, env)
                if self._wait_ready(retry_on_port_clash=attempt + 1 < _PORT_RETRIES):
                    break
            atexit.register(self.stop)
            for name in self.models:
                self.load(name)
        except BaseException:
            self.stop()
            raise
        return self

    def _build_backends(self, server_dir: Path, backends: Path) -> Path:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = server_dir / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            available = sorted(p.name for p in (server_dir / "python_backend_stubs").iterdir() if p.is_dir())
            raise MissingDependency(
                f"nvidia-pytriton has no Python backend stub for Python {version} (it has {available}).",
                fix="run the workbench on one of those Python versions",
            )
        python = backends / "python"
        shutil.copytree(server_dir / "backends" / "python", python)
        shutil.copy2(stub, python / "triton_python_backend_stub")
        if self.onnxruntime_backend:
            from workbench.triton.python_models import ONNXRUNTIME_BACKEND_MODEL

            (backends / "onnxruntime").mkdir()
            shutil.copyfile(ONNXRUNTIME_BACKEND_MODEL, backends / "onnxruntime" / "model.py")
        if self.openvino_backend:
            from workbench.triton.python_models import OPENVINO_BACKEND_MODEL

            (backends / "openvino").mkdir()
            shutil.copyfile(OPENVINO_BACKEND_MODEL, backends / "openvino" / "model.py")
        return backends

    def _environment(self, server_dir: Path) -> dict[str, str]:
        env = dict(os.environ)
        libs = server_dir.parent.parent / "nvidia_pytriton.libs"
        # The stub links libpython: without the running Python's own LIBDIR it mixes the system's libpython with
        # this environment's standard library ("'_thread.RLock' object has no attribute '_recursion_count'").
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        paths = [str(libs), libdir, env.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in paths if p)
        # The stub runs the first python on PATH's environment: this one, with onnxruntime, numpy and tokenizers.
        env["PATH"] = os.pathsep.join(p for p in (str(Path(sys.executable).parent), env.get("PATH", "")) if p)
        return env

    def _launch(self, server_dir: Path, backends: Path, env: dict[str, str]) -> None:
        # Unique per launch: servers never share Python-backend shared memory, and what a killed stub leaves in
        # /dev/shm can be removed by its name on stop.
        shm_prefix = self._shm_prefix = f"wb{os.getpid()}_{secrets.token_hex(4)}_"
        command = [
            str(server_dir / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            "--model-control-mode=explicit",
            "--disable-auto-complete-config",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            *self._metrics_args(),
            "--pinned-memory-pool-byte-size=0",
            "--cuda-memory-pool-byte-size=0:0",
            f"--exit-timeout-secs={max(1, int(self.stop_timeout_s) - 2)}",
            f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
            f"--log-verbose={self.log_verbose}",
            *self.extra_args,
        ]
        assert self._log_path is not None
        with open(self._log_path, "wb") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self._workdir,
                start_new_session=True,  # its own process group: the stubs go with it
            )

    def _metrics_args(self) -> list[str]:
        if not self.metrics:
            return ["--allow-metrics=false"]
        return [
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            "--allow-cpu-metrics=false",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            f"--metrics-interval-ms={self.metrics_interval_ms}",
        ]

    def _wait_ready(self, *, retry_on_port_clash: bool) -> bool:
        """True once ready; False if it died of a port clash and may be retried; raises otherwise."""
        assert self._process is not None
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                log = self.log_tail()
                if retry_on_port_clash and "address already in use" in log.lower():
                    self._reap()
                    return False
                code = self._process.returncode
                self._reap()
                raise TritonServerError(
                    f"The Triton server exited with code {code} while starting." + self._log_section(),
                    fix="read the server log above; a model repository problem is named there",
                )
            try:
                with opener.open(f"http://127.0.0.1:{self.http_port}/v2/health/ready", timeout=2) as response:
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise TritonServerError(
            f"The Triton server was not ready within {self.startup_timeout_s:.0f} s." + self._log_section(),
            fix="raise startup_timeout_s, or read the server log above",
        )

    def _reap(self) -> None:
        """Forget a process that has exited, after making sure its process group is gone too."""
        if self._process is not None:
            _kill_group(self._process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=5)
        self._process = None

    def stop(self) -> None:
        """Stop: SIGTERM to the server, SIGKILL to its process group after `stop_timeout_s`. Safe to call twice."""
        atexit.unregister(self.stop)
        process = self._process
        # An open HTTP connection makes the server wait a second longer before it shuts down: close ours first.
        for client in self._clients:
            with contextlib.suppress(Exception):
                client.close()
        self._clients.clear()
        self._client = None
        if process is not None:
            pgid = process.pid  # start_new_session=True: the server leads its own group
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # the server unloads its models and ends its stubs itself
                try:
                    process.wait(timeout=self.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    _kill_group(pgid, signal.SIGKILL)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        process.wait(timeout=5)
            # Python-backend stubs leave once the server is gone; give them a moment, then end what is left.
            deadline = time.monotonic() + 3
            while _kill_group(pgid, 0) and time.monotonic() < deadline:
                time.sleep(0.1)
            _kill_group(pgid, signal.SIGKILL)
            self._process = None
            self._remove_shared_memory()
        if self._workdir is not None:
            self._final_log = self.log_tail(10 * _LOG_TAIL_CHARS)
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
            self._log_path = None

    def _remove_shared_memory(self) -> None:
        """Remove shared-memory regions a killed stub left behind (a clean shutdown leaves none)."""
        if self._shm_prefix and os.path.isdir(_SHM_FOLDER):
            for path in Path(_SHM_FOLDER).glob(f"{self._shm_prefix}*"):
                with contextlib.suppress(OSError):
                    path.unlink()

    # ---------------------------------------------------------------------------------------------- models

    def new_client(self, *, concurrency: int = 1) -> Any:
        """A new `tritonclient.http.InferenceServerClient` for this server (one per thread: it is not
        thread-safe), with `load_timeout_s` as its network timeout."""
        http = require("tritonclient.http", purpose="Talking to a Triton server", extra="triton")
        self._require_running()
        client = http.InferenceServerClient(
            self.url, concurrency=concurrency, connection_timeout=10.0, network_timeout=self.load_timeout_s
        )
        self._clients.append(client)  # closed on stop
        return client

    @property
    def client(self) -> Any:
        """A `tritonclient.http.InferenceServerClient` for this server, made once (use it from one thread)."""
        if self._client is None:
            self._client = self.new_client()
        return self._client

    def load(self, name: str, *, config: str | None = None) -> None:
        """Load (or reload) model `name` from the repository, waiting at most `load_timeout_s`.

        Args:
            name: The model.
            config: A model config as JSON (protobuf's JSON form) to load instead of the repository's
                config.pbtxt, whose files are not touched (Triton's load-with-override; a load without it
                reads config.pbtxt again).

        Raises:
            TritonServerError: The server refused the model; the message has the server's own reason and the
                end of its log.
        """
        if config is None:  # an overriding config is the caller's; the repository's files are checked here
            self._check_configs(name)
        what = f"load model {name!r}" + (" with an overriding config" if config is not None else "")
        self._call(what, lambda: self.client.load_model(name, config=config))
        if not self.client.is_model_ready(name):
            raise TritonServerError(
                f"Triton loaded model {name!r} without an error but reports it not ready." + self._log_section(),
                fix="read the server log above",
            )

    def _check_configs(self, name: str, seen: frozenset[str] = frozenset()) -> None:
        """Parse `name`'s config.pbtxt (and its ensemble steps') strictly before asking the server to load it.

        The server reports a config that does not parse only as "failed to poll from model repository", and an
        ensemble over such a model as "contains models that are not available"; this names the file, the line
        and the column instead.
        """
        from workbench.errors import TritonExportError
        from workbench.triton.config import CONFIG_FILENAME, parse_model_config

        path = self.repository / name / CONFIG_FILENAME
        if name in seen or not path.is_file():
            return  # a missing model or config: the server's own message says so
        try:
            cfg = parse_model_config(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise TritonServerError(
                f"{path} is not UTF-8 text ({exc}), so Triton cannot load model {name!r}.",
                fix="re-export the model repository",
            ) from exc
        except TritonExportError as exc:
            step_of = f" (a step of ensemble {sorted(seen)[-1]!r})" if seen else ""
            raise TritonServerError(
                f"Triton cannot load model {name!r}{step_of}: its {path} does not parse. {exc.what}",
                expected=exc.expected,
                fix=exc.fix,
            ) from exc
        for step in cfg.ensemble_scheduling.step:
            self._check_configs(step.model_name, seen | {name})

    def unload(self, name: str) -> None:
        """Unload model `name` (waits until it is unloaded)."""
        self._call(f"unload model {name!r}", lambda: self.client.unload_model(name, unload_dependents=True))

    def _call(self, what: str, call: Any) -> Any:
        utils = require("tritonclient.utils", purpose="Talking to a Triton server", extra="triton")
        self._require_running()
        try:
            return call()
        except utils.InferenceServerException as exc:
            message = exc.message() if callable(getattr(exc, "message", None)) else str(exc)
            raise TritonServerError(
                f"Triton could not {what}: {message}" + self._log_section(),
                fix="the server's reason is above; fix the model's config.pbtxt or files (re-export), then load again",
            ) from exc
        except Exception as exc:  # socket timeouts, refused or reset connections (the server died)
            if not self.running:
                raise TritonServerError(
                    f"The Triton server exited while trying to {what} ({type(exc).__name__}: {exc})."
                    + self._log_section(),
                    fix="read the server log above (a crashing backend or model.py is named there)",
                ) from exc
            raise TritonServerError(
                f"No answer from Triton to {what} within {self.load_timeout_s:.0f} s ({type(exc).__name__}: "
                f"{exc}); the server is still running." + self._log_section(),
                fix="raise load_timeout_s, or read the server log above",
            ) from exc
