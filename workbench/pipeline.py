"""The whole workflow as one object whose methods are the stages, in order; each returns its stage's result.

A notebook calls the methods one per cell; a script calls `run_all()`. Every file goes under
`parameters.output_dir`, and `write_summary()` writes the `summary.json` that CI jobs read.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from workbench._files import OutputFolder
from workbench.config import StageConfig, check_positive
from workbench.errors import ConfigError, WorkbenchError
from workbench.models import HFModelSource, ModelSource, OnnxSource, load_model
from workbench.stages.accuracy.compare import AccuracyBudget
from workbench.stages.benchmark.latency import BenchmarkConfig
from workbench.stages.export import ExportConfig
from workbench.stages.precision.quantize import DynamicQuantConfig

SUMMARY_FILE = "summary.json"
SUMMARY_VERSION = 1


@dataclass(frozen=True)
class PipelineParameters(StageConfig):
    """The quickstart's parameters; the notebook's `parameters` cell maps onto these one to one.

    Attributes:
        model_path: None for the bundled all-MiniLM-L6-v2; a local Hugging Face directory; or an .onnx file.
        data_dir: Folder with calibration.txt and evaluation.txt; None for the bundled sentences.
        output_dir: Where every file of the run goes.
        sequence_length: Padded length for evaluation and timing (how a batching server feeds the model).
        max_calibration_samples: Calibration sentences to use (static INT8 calibrates on them).
        max_eval_samples: Held-out sentences the candidates are compared on.
        eval_batch_size: Sentences per evaluation batch.
        benchmark_batch_sizes: Batch sizes to time.
        benchmark_iterations: Timed runs per candidate and shape.
        threads: Threads for every engine; None: all cores.
        triton_model_name: Name of the model in the Triton repository; None: derived from the model's name.
        overwrite: Replace an existing Triton repository model folder from an earlier run.
    """

    model_path: str | None = None
    data_dir: str | None = None
    output_dir: str = "runs/quickstart"
    sequence_length: int = 128
    max_calibration_samples: int = 64
    max_eval_samples: int = 64
    eval_batch_size: int = 8
    benchmark_batch_sizes: tuple[int, ...] = (1, 8)
    benchmark_iterations: int = 30
    threads: int | None = None
    triton_model_name: str | None = None
    overwrite: bool = False

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "ci": {"max_calibration_samples": 16, "max_eval_samples": 16, "benchmark_batch_sizes": (1,),
               "benchmark_iterations": 5, "sequence_length": 64},
        "demo": {},
    }

    def __post_init__(self) -> None:
        check_positive(self, "sequence_length", "max_calibration_samples", "max_eval_samples", "eval_batch_size",
                       "benchmark_batch_sizes", "benchmark_iterations")
        if self.sequence_length < 8:
            raise ConfigError(f"sequence_length must be at least 8 tokens, got {self.sequence_length}.")


class Pipeline:
    """Export, fuse, quantize, compare, benchmark, choose and export to Triton, one method per step.

    Args:
        parameters: The run's parameters.
        source: A model source to use instead of `parameters.model_path` (e.g. a ModuleSource).
        export_config: How to export and check the export.
        quant_config: The INT8 candidate's quantization.
        budget: The accuracy budget candidates must meet to be chosen.
    """

    def __init__(
        self,
        parameters: PipelineParameters = PipelineParameters(),
        *,
        source: ModelSource | None = None,
        export_config: ExportConfig = ExportConfig(),
        quant_config: DynamicQuantConfig = DynamicQuantConfig(),
        budget: AccuracyBudget = AccuracyBudget(),
    ) -> None:
        self.parameters = parameters
        self.export_config = export_config
        self.quant_config = quant_config
        self.budget = budget
        self.output_dir = Path(parameters.output_dir).resolve()  # summary.json records absolute paths
        self.source = source if source is not None else load_model(parameters.model_path)
        # one run per output folder: a lock, an earlier run refused up front without overwrite, leftovers cleaned
        self.output_folder = OutputFolder(self.output_dir).claim(overwrite=parameters.overwrite)
        self.results: dict[str, Any] = {}
        self.candidates: dict[str, Path] = {}
        self._tokenizer: Any = None
        self._splits: Any = None

    @classmethod
    def from_parameters(cls, **parameters: Any) -> Pipeline:
        """Build from keyword parameters (as papermill passes them); unknown names are an error."""
        return cls(PipelineParameters.from_dict(parameters))

    # inputs ---------------------------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = self.source.load_tokenizer()
        return self._tokenizer

    @property
    def sentences(self) -> Any:
        if self._splits is None:
            from workbench.data import load_sentence_splits

            self._splits = load_sentence_splits(
                self.parameters.data_dir,
                max_calibration=self.parameters.max_calibration_samples,
                max_eval=self.parameters.max_eval_samples,
            )
        return self._splits

    @property
    def input_names(self) -> tuple[str, ...]:
        from workbench.engines.onnxruntime import OnnxRuntimeRunner

        with OnnxRuntimeRunner(self._require("reference")) as runner:
            return tuple(runner.input_specs())

    @property
    def candidate_models(self) -> dict[str, Path]:
        """Candidate name -> ONNX model, the reference left out (it is what candidates are compared with)."""
        return {name: path for name, path in self.candidates.items() if name != "reference"}

    def pytorch_module(self) -> Any:
        """The source's torch module (the latency baseline), or None for an .onnx source."""
        return None if isinstance(self.source, OnnxSource) else self.source.load_module()

    def evaluation_feeds(self) -> list[dict[str, Any]]:
        """Evaluation sentences tokenized as a batching server feeds them: padded to the sequence length."""
        from workbench.data import tokenize_batches

        return tokenize_batches(self.tokenizer, self.sentences.evaluation, batch_size=self.parameters.eval_batch_size,
                                sequence_length=self.parameters.sequence_length, input_names=self.input_names)

    def _feeds_for(self, batch: int, seq: int) -> dict[str, Any]:
        from workbench.data import tokenize_batches

        texts = self.sentences.evaluation
        chosen = [texts[i % len(texts)] for i in range(batch)]
        return tokenize_batches(self.tokenizer, chosen, batch_size=batch, sequence_length=seq,
                                input_names=self.input_names)[0]

    def _require(self, key: str) -> Path:
        if key == "reference":
            if "reference" not in self.candidates:
                raise WorkbenchError("There is no reference ONNX model yet.", fix="run export() first")
            return self.candidates["reference"]
        if key not in self.results:
            raise WorkbenchError(f"Step {key!r} has not run yet.", fix=f"run {key}() first")
        return self.results[key]

    # steps ----------------------------------------------------------------------------------------------------
    def export(self) -> Any:
        """Export to ONNX and check it against PyTorch (an .onnx source is checked and used as it is)."""
        from workbench.stages.export import export_onnx

        if isinstance(self.source, OnnxSource):
            self.candidates["reference"] = self.source.path
            self.candidates["fp32"] = self.source.path
            self.results["export"] = None
            return None
        result = export_onnx(self.source, self.output_dir / "model.onnx", self.export_config,
                             check_texts=self.sentences.evaluation)
        self.candidates["reference"] = result.path
        self.candidates["fp32"] = result.path
        self.results["export"] = result
        return result

    def fuse(self) -> Any:
        """Fuse transformer subgraphs (Attention, LayerNorm, GELU) with onnxruntime's optimizer."""
        from workbench.stages.fusion import FusionConfig, fuse_transformer

        config = FusionConfig.for_source(self.source)
        result = fuse_transformer(self._require("reference"), self.output_dir / "model_fused.onnx", config,
                                  check_feeds=self.evaluation_feeds()[:1])
        self.candidates["fp32_fused"] = result.path
        self.results["fuse"] = result
        return result

    def quantize(self) -> Any:
        """Dynamic INT8 (per-channel weights by default) on the fused graph when there is one."""
        from workbench.stages.precision.quantize import quantize_dynamic

        base = self.candidates.get("fp32_fused", self._require("reference"))
        name = "int8_dynamic_per_channel" if self.quant_config.per_channel else "int8_dynamic_per_tensor"
        result = quantize_dynamic(base, self.output_dir / f"model_{name}.onnx", self.quant_config)
        self.candidates[name] = result.path
        self.results["quantize"] = result
        return result

    def quantize_smoothquant(self) -> Any:
        """Dynamic INT8 after SmoothQuant: activation outliers moved into the weights first.

        Smoothing is calibrated on the calibration sentences (padded to the sequence length). On MiniLM it takes
        dynamic INT8 from mean/min embedding cosine 0.992/0.971 to 0.997/0.991 at the same speed.
        """
        from dataclasses import replace

        from workbench.data import tokenize_batches
        from workbench.stages.precision.plan import PrecisionPlan
        from workbench.stages.precision.smooth import SmoothingConfig

        base = self.candidates.get("fp32_fused", self._require("reference"))
        calibration = tokenize_batches(self.tokenizer, self.sentences.calibration,
                                       batch_size=self.parameters.eval_batch_size,
                                       sequence_length=self.parameters.sequence_length, input_names=self.input_names)
        plan = replace(PrecisionPlan("int8_dynamic", self.quant_config), smoothing=SmoothingConfig())
        name = "int8_dynamic_smoothquant"
        result = plan.convert(base, self.output_dir / f"model_{name}.onnx", calibration_feeds=calibration)
        self.candidates[name] = result.path
        self.results["quantize_smoothquant"] = result
        return result

    def compare(self) -> Any:
        """Compare every candidate with the FP32 reference on the held-out sentences (Polygraphy)."""
        from workbench.stages.accuracy.compare import compare_candidates

        report = compare_candidates(self._require("reference"), self.candidate_models, self.evaluation_feeds(),
                                    budget=self.budget, threads=self.parameters.threads)
        self.results["compare"] = report
        return report

    def benchmark(self) -> Any:
        """Time PyTorch and every candidate, interleaved, at batch sizes x the sequence length."""
        from workbench.engines.onnxruntime import OnnxRuntimeRunner
        from workbench.engines.pytorch import PyTorchRunner
        from workbench.stages.benchmark.latency import benchmark

        config = BenchmarkConfig(batch_sizes=self.parameters.benchmark_batch_sizes,
                                 sequence_lengths=(self.parameters.sequence_length,),
                                 iterations=self.parameters.benchmark_iterations, threads=self.parameters.threads)
        runners: list[Any] = []
        module = self.pytorch_module()
        if module is not None:
            output_names = self.results["export"].output_names if self.results.get("export") else ("last_hidden_state",)
            runners.append(PyTorchRunner(module, output_names=output_names, name="pytorch",
                                         threads=config.effective_threads))
        runners += [
            OnnxRuntimeRunner(path, name=name, intra_op_threads=config.effective_threads, allow_spinning=False)
            for name, path in self.candidate_models.items()
        ]
        result = benchmark(runners, self._feeds_for, config)
        self.results["benchmark"] = result
        return result

    def choose(self, batch: int = 1) -> Any:
        """The fastest candidate at `batch` that meets the accuracy budget."""
        from workbench.stages.choose import choose_candidate

        choice = choose_candidate(self._require("compare"), self._require("benchmark"), batch=batch,
                                  seq=self.parameters.sequence_length)
        self.results["choose"] = choice
        return choice

    def export_triton(self) -> Any:
        """Write the chosen model as a Triton model repository under output_dir/triton_repository.

        With a tokenizer (Hugging Face and .onnx sources), the repository serves raw text: a tokenizer model, the
        chosen ONNX model with dynamic batching, mean pooling + normalisation for embedding models, and an
        ensemble wiring them; plus a README and provenance.json. A ModuleSource gets the ONNX model alone.
        """
        from workbench.triton.config import TritonConfig
        from workbench.triton.model import export_triton
        from workbench.triton.ensemble import export_triton_ensemble

        choice = self._require("choose")
        name = self.parameters.triton_model_name or _triton_name(self.source.name)
        candidate = self.candidates[choice.name]
        repository = self.output_dir / "triton_repository"
        config = TritonConfig(model_name=name, max_batch_size=max(8, *self.parameters.benchmark_batch_sizes),
                              warmup=True, warmup_sequence_length=self.parameters.sequence_length)
        tokenizer_dir = None
        if isinstance(self.source, HFModelSource):
            tokenizer_dir = self.source.path
        elif isinstance(self.source, OnnxSource):
            tokenizer_dir = self.source.tokenizer_path or self.source.path.parent
        if tokenizer_dir is None:
            result = export_triton(candidate, repository, config, overwrite=self.parameters.overwrite)
        else:
            report, timings = self.results.get("compare"), self.results.get("benchmark")
            accuracy = report[choice.name].to_dict() if report is not None else None
            speed = ({"p50_ms": {f"batch {r.batch}, seq {r.seq}": r.p50_ms for r in timings.rows if r.name == choice.name},
                      "machine": timings.machine} if timings is not None else None)
            feature_extraction = getattr(self.source, "task", "feature-extraction") == "feature-extraction"
            result = export_triton_ensemble(
                candidate, repository, tokenizer_dir, config, sequence_length=self.parameters.sequence_length,
                pooling="mean" if feature_extraction else None,
                provenance={"source_model": str(getattr(self.source, "path", self.source.name)),
                            "chosen": choice.name, "chosen_reason": choice.reason, "accuracy": accuracy,
                            "speed": speed, "quantization": self.quant_config.to_dict()},
                overwrite=self.parameters.overwrite)
        self.results["export_triton"] = result
        return result

    def write_summary(self) -> dict[str, Any]:
        """Write output_dir/summary.json (the contract CI reads) and return it."""
        from workbench._files import atomic_path
        from workbench.summary import build_summary

        summary = build_summary(self)
        with atomic_path(self.output_dir / SUMMARY_FILE) as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
        self.output_folder.release()  # the run is complete: the folder is free for the next one
        self.results["summary"] = summary
        return summary

    def run_all(self) -> dict[str, Any]:
        """Every step in order; returns the summary."""
        self.export()
        self.fuse()
        self.quantize()
        self.quantize_smoothquant()
        self.compare()
        self.benchmark()
        self.choose()
        self.export_triton()
        return self.write_summary()


def _triton_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "model"
    return cleaned.lower()
