"""OpenVINO engine: the runner (compiled models are created here and in the other engines only), ONNX -> OpenVINO
IR conversion, and the precision every op runs in, read back from a compiled model or a saved IR.

Nothing heavy is imported at module level: `openvino` is imported inside the functions that need it, through
`workbench._lazy.require`, which names the `openvino` extra when it is missing.

OpenVINO IR is two files, `model.xml` (the graph) and `model.bin` (the weights) beside it with the same stem;
OpenVINO finds the weights by that name, so the pair always moves together.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workbench._lazy import require
from workbench.engines.base import Availability, BaseRunner, Engine, check_float_precision, register_engine
from workbench.errors import ConfigError, DeviceUnavailable, ModelSourceError, WorkbenchError

EXTRA = "openvino"
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")
#: A Candidate's float_precision -> OpenVINO's INFERENCE_PRECISION_HINT.
INFERENCE_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}
#: OpenVINO's runtime layer types that do the arithmetic whose precision a PrecisionPlan decides.
COMPUTE_LAYER_TYPES = ("FullyConnected", "MatMul", "Convolution", "GroupConvolution", "Deconvolution")


@contextlib.contextmanager
def _telemetry_hidden() -> Iterator[None]:
    """Hide `openvino_telemetry` while OpenVINO / NNCF are first imported.

    At import both build an `openvino_telemetry` client (OpenVINO through its model converter, NNCF for its own
    events), which writes ``~/intel/openvino_ga_cid`` and ``~/intel/stats`` -- outside every path a step is given --
    and tries to send usage events. Without the package each falls back to its own stub ("No telemetry will be
    sent"); the package is visible again afterwards, for whoever imports it on purpose.
    """
    hidden = sys.modules.get("openvino_telemetry")
    sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # an import of it raises ImportError
    try:
        yield
    finally:
        if hidden is None:
            sys.modules.pop("openvino_telemetry", None)
        else:
            sys.modules["openvino_telemetry"] = hidden


def require_openvino(purpose: str) -> Any:
    """The `openvino` package (imported without its telemetry: see `_telemetry_hidden`), or MissingDependency
    naming the extra."""
    if "openvino" in sys.modules:
        return require("openvino", purpose=purpose, extra=EXTRA)
    with _telemetry_hidden():
        return require("openvino", purpose=purpose, extra=EXTRA)


def require_nncf(purpose: str) -> Any:
    """NNCF (with OpenVINO; both imported without their telemetry), or MissingDependency naming the extra."""
    require_openvino(purpose)
    if "nncf" in sys.modules:
        return require("nncf", purpose=purpose, extra=EXTRA)
    with _telemetry_hidden():
        return require("nncf", purpose=purpose, extra=EXTRA)


_openvino = require_openvino


class OpenVINORunner(BaseRunner):
    """Runs an OpenVINO model (IR .xml, or an .onnx file OpenVINO reads directly, or an in-memory `ov.Model`).

    Args:
        model: The model.xml (its model.bin beside it), an .onnx file, or an `openvino.Model`.
        name: Name used in reports; default: the file's stem.
        threads: INFERENCE_NUM_THREADS; None lets OpenVINO choose (all cores).
        hint: PERFORMANCE_HINT: "LATENCY" (one request at a time: the online-serving case) or "THROUGHPUT"
            (many parallel streams, for batch jobs and servers with many concurrent requests).
        streams: NUM_STREAMS; None: what the hint chooses (1 for LATENCY).
        shapes: Input name -> static shape to reshape the model to before compiling (e.g. {"input_ids": [1,
            128]}); None keeps the model's dynamic shapes.
        inference_precision: INFERENCE_PRECISION_HINT for floating-point ops. "f32" (the default) keeps FP32 ops
            in FP32: on CPUs with AMX OpenVINO would otherwise run them in bf16, and an "fp32" candidate's
            accuracy would not be FP32's. None: OpenVINO's choice for the device.
        device: The OpenVINO device ("CPU").
        output_names: Outputs to return; default all.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | Any,
        *,
        name: str | None = None,
        threads: int | None = None,
        hint: str = "LATENCY",
        streams: int | None = None,
        shapes: Mapping[str, Sequence[int]] | None = None,
        inference_precision: str | None = "f32",
        device: str = "CPU",
        output_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if hint not in PERFORMANCE_HINTS:
            raise ConfigError(f"OpenVINO performance hint {hint!r} is not one of {list(PERFORMANCE_HINTS)}.")
        for label, value in (("threads", threads), ("streams", streams)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"OpenVINORunner {label} must be a positive integer or None, got {value!r}.")
        self.model = model if not isinstance(model, (str, os.PathLike)) else Path(model)
        default_name = self.model.stem if isinstance(self.model, Path) else "openvino"
        self.name = name or default_name
        self.threads = threads
        self.hint = hint
        self.streams = streams
        self.shapes = {k: [int(d) for d in v] for k, v in shapes.items()} if shapes else None
        self.inference_precision = inference_precision
        self.device = device
        self.output_names = list(output_names) if output_names is not None else None
        self.compiled: Any = None
        self._request: Any = None
        self._outputs: list[tuple[str, Any]] = []

    @property
    def properties(self) -> dict[str, Any]:
        """The compile properties this runner passes to OpenVINO."""
        properties: dict[str, Any] = {"PERFORMANCE_HINT": self.hint}
        if self.threads is not None:
            properties["INFERENCE_NUM_THREADS"] = self.threads
        if self.streams is not None:
            properties["NUM_STREAMS"] = self.streams
        if self.inference_precision is not None:
            properties["INFERENCE_PRECISION_HINT"] = self.inference_precision
        return properties

    def _activate(self) -> None:
        ov = _openvino("Running OpenVINO models")
        core = ov.Core()
        model = read_model(self.model, core=core) if isinstance(self.model, Path) else self.model
        if self.shapes:
            known = {name for i in model.inputs for name in i.get_names()}
            unknown = sorted(set(self.shapes) - known)
            if unknown:
                raise ConfigError(
                    f"OpenVINORunner shapes name inputs {unknown} that {self.name!r} does not have.",
                    expected=f"input names among {sorted(known)}",
                )
            model = model.clone() if not isinstance(self.model, Path) else model  # never reshape a caller's model
            model.reshape({name: ov.PartialShape(shape) for name, shape in self.shapes.items()})
        if self.inference_precision == "bf16" and "BF16" not in core.get_property(
            self.device, "OPTIMIZATION_CAPABILITIES"
        ):
            # OpenVINO would quietly run f32 instead: the candidate's timing and accuracy would not be bf16's
            raise DeviceUnavailable(
                f"OpenVINO runner {self.name!r} asks for bf16 floating-point ops, but this {self.device} has no "
                "bfloat16 instructions (OPTIMIZATION_CAPABILITIES lacks BF16).",
                fix='use float_precision="fp32" on this machine',
            )
        try:
            self.compiled = core.compile_model(model, self.device, self.properties)
        except Exception as exc:
            raise WorkbenchError(
                f"OpenVINO could not compile {self.name!r} for {self.device}: {type(exc).__name__}: {exc}",
                fix="check the model with openvino.Core().read_model(); quantize FP32 models with NNCF "
                "(precision method int8_nncf) rather than feeding onnxruntime's QDQ models to OpenVINO",
            ) from exc
        self._request = self.compiled.create_infer_request()
        outputs = [(_tensor_name(o), o) for o in self.compiled.outputs]
        if self.output_names is not None:
            by_name = {n: o for _, o in outputs for n in o.get_names()}
            missing = [n for n in self.output_names if n not in by_name]
            if missing:
                raise ConfigError(
                    f"OpenVINO model {self.name!r} has no outputs {missing}.",
                    expected=f"outputs among {sorted(by_name)}",
                )
            outputs = [(n, by_name[n]) for n in self.output_names]
        self._outputs = outputs

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._request.infer({k: np.asarray(v) for k, v in feeds.items()})
        # the request owns its output buffers and reuses them on the next call: hand out copies
        return {name: np.array(results[output], copy=True) for name, output in self._outputs}

    def _deactivate(self) -> None:
        self._request = None
        self.compiled = None
        self._outputs = []

    def input_specs(self) -> dict[str, tuple[np.dtype, list[int | str | None]]]:
        """Input name -> (numpy dtype, shape; dynamic dims are None), as the onnxruntime runner gives them."""
        if self.compiled is None:
            raise RuntimeError(f"Runner {self.name!r} is not active: activate it first.")
        specs = {}
        for tensor in self.compiled.inputs:
            shape = [d.get_length() if d.is_static else None for d in tensor.get_partial_shape()]
            specs[_tensor_name(tensor)] = (np.dtype(tensor.get_element_type().to_dtype()), shape)
        return specs

    def runtime_precisions(self) -> dict[str, str]:
        """Original op name -> the precision it runs in (see :func:`runtime_precisions`). Needs an active runner."""
        if self.compiled is None:
            raise RuntimeError(f"Runner {self.name!r} is not active: activate it first.")
        return runtime_precisions(self.compiled)


def _tensor_name(port: Any) -> str:
    """The port's graph name: a tensor can carry several (the ONNX graph output `logits` and the producing node's
    `/classifier/Add_output_0`); the one without a path is the model's own, whatever sorts first."""
    names = port.get_names()
    if not names:
        return str(port.get_any_name())
    plain = sorted(n for n in names if "/" not in n and ":" not in n)
    return plain[0] if plain else min(names)


def read_model(path: str | os.PathLike[str], *, core: Any = None) -> Any:
    """Read an OpenVINO IR (.xml with its .bin) or an .onnx file into an `openvino.Model`.

    Raises:
        ModelSourceError: The file, or the IR's weights file, does not exist, or OpenVINO cannot read it.
    """
    ov = _openvino("Reading OpenVINO models")
    path = Path(path)
    if not path.is_file():
        raise ModelSourceError(
            f"Model file {path} does not exist.",
            fix="convert the model first: convert_to_openvino(model.onnx, model.xml)",
        )
    if path.suffix.lower() == ".xml" and not path.with_suffix(".bin").is_file():
        raise ModelSourceError(
            f"OpenVINO IR {path} has no weights file {path.with_suffix('.bin').name} beside it.",
            fix="keep model.xml and model.bin together (same folder, same stem)",
        )
    try:
        return (core or ov.Core()).read_model(str(path))
    except Exception as exc:
        raise ModelSourceError(
            f"OpenVINO could not read {path}: {type(exc).__name__}: {exc}",
            expected="an OpenVINO IR .xml (with its .bin) or an .onnx file",
        ) from exc


def _name_generated_ops(model: Any) -> None:
    """Give the ops OpenVINO named itself (`Constant_356`: a counter shared by the whole process) names from their
    place in the graph, so the same model saves to the same .xml bytes in any process (a recipe replay compares
    them; NNCF's copies of such ops keep the copied counter name, so the name's form is what is matched). Ops named
    after an ONNX node keep their names (pins name them)."""
    import re

    for index, op in enumerate(model.get_ordered_ops()):
        if re.fullmatch(rf"{re.escape(op.get_type_name())}_\d+(_\d+)*", op.get_friendly_name()):
            op.set_friendly_name(f"{op.get_type_name()}_op{index}")


def save_model(model: Any, output_xml: str | os.PathLike[str], *, compress_to_fp16: bool = False) -> Path:
    """Save an `openvino.Model` as IR, atomically: `output_xml` and its .bin appear together, or neither does.

    Both files are written into a private folder beside `output_xml` and moved into place at the end; on any
    failure that folder is removed and an existing model at `output_xml` is left as it was.

    Args:
        model: The model.
        output_xml: Where the graph goes (must end in .xml); the weights go beside it, with the suffix .bin.
        compress_to_fp16: Store FP32 weights as FP16 (half the size; OpenVINO computes in FP32 all the same on
            CPU). Off by default, so an FP32 candidate keeps FP32 weights.

    Raises:
        ConfigError: `output_xml` does not end in .xml.
        WorkbenchError: OpenVINO could not save the model.
    """
    ov = _openvino("Saving OpenVINO models")
    output_xml = Path(output_xml)
    if output_xml.suffix.lower() != ".xml":
        raise ConfigError(
            f"An OpenVINO IR is saved as an .xml file (with a .bin beside it), not {output_xml.name}.",
            fix="pass a path such as out/model.xml",
        )
    _name_generated_ops(model)
    output_xml.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_xml.stem}.", suffix=".partial", dir=output_xml.parent))
    try:
        staged = staging / output_xml.name
        try:
            ov.save_model(model, str(staged), compress_to_fp16=compress_to_fp16)
        except Exception as exc:
            raise WorkbenchError(
                f"OpenVINO could not save the model to {output_xml}: {type(exc).__name__}: {exc}",
                fix="check free disk space and that the model is valid",
            ) from exc
        # the weights first, then the graph: a reader that finds the new .xml also finds its .bin
        os.replace(staged.with_suffix(".bin"), output_xml.with_suffix(".bin"))
        os.replace(staged, output_xml)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_xml


@dataclass(frozen=True)
class ConversionResult:
    """An ONNX model converted to OpenVINO IR.

    Attributes:
        path: model.xml (its weights in `weights`).
        weights: model.bin.
        source: The ONNX model it was converted from.
        ops: Op type -> count in the IR.
        size_mb: Size of the .bin.
        seconds: Conversion time.
        compress_to_fp16: Whether the weights were stored as FP16.
    """

    path: Path
    weights: Path
    source: Path
    ops: dict[str, int]
    size_mb: float
    seconds: float
    compress_to_fp16: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "weights": str(self.weights),
            "source": str(self.source),
            "ops": self.ops,
            "size_mb": self.size_mb,
            "seconds": self.seconds,
            "compress_to_fp16": self.compress_to_fp16,
        }

    def _repr_html_(self) -> str:
        weights = "FP16" if self.compress_to_fp16 else "FP32"
        return (
            f"<b>OpenVINO IR</b>: <code>{self.path}</code> + <code>{self.weights.name}</code> "
            f"({self.size_mb:.1f} MB, {weights} weights, {sum(self.ops.values())} ops) from "
            f"<code>{self.source.name}</code> in "
            f"{self.seconds:.1f} s"
        )


def convert_to_openvino(
    onnx_path: str | os.PathLike[str],
    output_xml: str | os.PathLike[str],
    *,
    compress_to_fp16: bool = False,
) -> ConversionResult:
    """Convert an ONNX model to OpenVINO IR (`output_xml` + the .bin beside it), FP32 weights kept by default.

    Op names stay the ONNX node names (OpenVINO's ONNX frontend names each op after its node), so a
    PrecisionPlan's pins, given by ONNX node name, apply to the IR. Writes nothing but the two files, atomically.

    Args:
        onnx_path: The FP32 ONNX model (the plain export converts best: OpenVINO fuses it itself; onnxruntime's
            fused contrib ops are not all understood).
        output_xml: The IR's .xml path.
        compress_to_fp16: Store the weights as FP16 (see :func:`save_model`).

    Raises:
        ModelSourceError: The ONNX file does not exist or OpenVINO cannot read it.
        ConfigError: `output_xml` does not end in .xml.
    """
    _openvino("Converting ONNX models to OpenVINO IR")
    if Path(output_xml).suffix.lower() != ".xml":  # checked before any work
        raise ConfigError(
            f"An OpenVINO IR is saved as an .xml file (with a .bin beside it), not {Path(output_xml).name}.",
            fix="pass a path such as out/model.xml",
        )
    source = Path(onnx_path)
    started = time.perf_counter()
    model = read_model(source)
    path = save_model(model, output_xml, compress_to_fp16=compress_to_fp16)
    weights = path.with_suffix(".bin")
    ops = Counter(op.get_type_name() for op in model.get_ordered_ops())
    return ConversionResult(
        path,
        weights,
        source,
        dict(sorted(ops.items())),
        weights.stat().st_size / 1e6,
        time.perf_counter() - started,
        compress_to_fp16,
    )


# --------------------------------------------------------------------------------------------------------------
# Which precision each op runs in


def runtime_precisions(compiled: Any) -> dict[str, str]:
    """Original op name -> the precision OpenVINO runs it in, from a compiled model's runtime graph.

    The runtime graph's layers carry `originalLayersNames` (the ops of the IR they were fused from) and
    `runtimePrecision` ("u8", "i8", "f32", "bf16"...). Each original op takes the precision of the compute layer
    (FullyConnected, MatMul, Convolution) it was fused into, else of the first layer that names it. OpenVINO's
    low-precision passes rename a quantized op `<op>/DequantizationMultiply` (or `.../DequantizationSubtract`):
    those names count for `<op>`. Ops folded into a layer named after another op (the attention scores MatMul
    into the scaling Mul, say) are not listed.

    Args:
        compiled: An `openvino.CompiledModel`.
    """
    found: dict[str, tuple[bool, str]] = {}
    for layer in compiled.get_runtime_model().get_ordered_ops():
        info = layer.get_rt_info()
        if "originalLayersNames" not in info or "runtimePrecision" not in info:
            continue
        names = [_op_name(n) for n in str(info["originalLayersNames"].astype(str)).split(",") if n]
        precision = str(info["runtimePrecision"].astype(str))
        layer_type = str(info["layerType"].astype(str)) if "layerType" in info else layer.get_type_name()
        compute = layer_type in COMPUTE_LAYER_TYPES
        for name in names:
            if name not in found or (compute and not found[name][0]):
                found[name] = (compute, precision)
    return {name: precision for name, (_, precision) in found.items()}


_DEQUANTIZATION_SUFFIXES = ("/DequantizationMultiply", "/DequantizationSubtract", "/DequantizationConvert")


def _op_name(runtime_name: str) -> str:
    for suffix in _DEQUANTIZATION_SUFFIXES:
        if runtime_name.endswith(suffix):
            return runtime_name[: -len(suffix)]
    return runtime_name


#: IR op type -> the inputs whose precision decides the op's: every input of a compute op, the table of a Gather
#: (NNCF stores a transformer's embedding tables in INT8).
_PRECISION_INPUTS: dict[str, tuple[int, ...] | None] = {
    "MatMul": None,
    "Convolution": None,
    "GroupConvolution": None,
    "ConvolutionBackpropData": None,
    "Gather": (0,),
}


def ir_precisions(model: Any) -> dict[str, str]:
    """Op name -> "int8" or "fp32" for the ops of an IR whose precision a quantizer decides, read from its graph.

    Those are the compute ops (MatMul, Convolution...) and Gathers (embedding tables). An op is INT8 when an input
    reaches it through a FakeQuantize (NNCF's activation quantizers) or from an integer weight constant (NNCF's
    compressed weights, Constant(i8) -> Convert -> Subtract/Multiply); else FP32.

    Args:
        model: An `openvino.Model` or the path of an IR / ONNX file.
    """
    if isinstance(model, (str, os.PathLike)):
        model = read_model(model)
    precisions = {}
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in _PRECISION_INPUTS:
            continue
        ports = _PRECISION_INPUTS[kind] or range(op.get_input_size())
        quantized = any(_fed_by_quantizer(op.input_value(i).get_node()) for i in ports)
        precisions[op.get_friendly_name()] = "int8" if quantized else "fp32"
    return precisions


_PASS_THROUGH = ("Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze")


def _fed_by_quantizer(node: Any, depth: int = 0) -> bool:
    kind = node.get_type_name()
    if kind == "FakeQuantize":
        return True
    if kind == "Constant":
        return node.get_output_element_type(0).get_type_name() in ("i8", "u8", "i4", "u4")
    if kind in _PASS_THROUGH and depth < 6:
        # dequantization chains: follow the data input (the first), not the scale
        return _fed_by_quantizer(node.input_value(0).get_node(), depth + 1)
    return False


def op_precisions(
    model: str | os.PathLike[str] | Any, *, compiled: bool = True, threads: int | None = None
) -> dict[str, str]:
    """The precision each op runs in: from the compiled runtime graph (default) or statically from the IR.

    Args:
        model: An IR path, an .onnx path or an `openvino.Model`.
        compiled: Compile it for the CPU and read the runtime graph (what really runs: "u8", "i8", "f32"...);
            False reads the IR's graph ("int8" / "fp32" per compute op, see :func:`ir_precisions`).
        threads: Threads for the compile.
    """
    if not compiled:
        return ir_precisions(model)
    runner = OpenVINORunner(model, threads=threads)
    with runner:
        return runner.runtime_precisions()


def is_int8(precision: str) -> bool:
    """Whether a precision string from :func:`runtime_precisions` or :func:`ir_precisions` is an 8-bit integer."""
    return precision.lower() in ("i8", "u8", "int8", "uint8")


@register_engine
class OpenVINO(Engine):
    """OpenVINO on the CPU: IR models (model.xml + model.bin), FP32 or INT8 quantized with NNCF."""

    name = "openvino"
    title = "OpenVINO"
    extra = EXTRA
    suffixes = (".xml",)
    precisions = ("fp32", "int8_nncf")
    float_precisions = ("fp32", "bf16")
    triton_backend = "openvino"
    model_files = ("model.xml", "model.bin")

    def availability(self) -> Availability:
        from workbench._lazy import installed_distribution

        version = installed_distribution("openvino")
        try:
            ov = _openvino("OpenVINO")
        except WorkbenchError as exc:
            install = f'pip install "inference-workbench[{EXTRA}]"'
            return Availability(False, f"{exc.what} Install the [{EXTRA}] extra: {install}", version)
        try:
            devices = ", ".join(ov.Core().available_devices)
        except RuntimeError as exc:  # the package imports but its runtime cannot start: say so, do not crash doctor
            return Availability(False, f"openvino {version} is installed but cannot start: {exc}", version)
        version = version or str(ov.__version__).split("-")[0]
        return Availability(True, f"openvino {version} ({devices})", version)

    def runner(
        self, model: Any, *, name: str | None = None, threads: int | None = None, float_precision: str = "fp32"
    ) -> OpenVINORunner:
        check_float_precision(self, float_precision)
        self.require()
        return OpenVINORunner(
            model, name=name, threads=threads, inference_precision=INFERENCE_PRECISIONS[float_precision]
        )
