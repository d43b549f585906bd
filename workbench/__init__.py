"""Inference Workbench: take a PyTorch / Hugging Face model to a fast, checked production engine.

This module only re-exports. Names resolve lazily (PEP 562), so `import workbench` imports neither torch nor
onnxruntime; each stage imports what it needs when it runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from workbench._lazy import lazy_exports

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # errors
    "WorkbenchError": "workbench.errors",
    "ConfigError": "workbench.errors",
    "ModelSourceError": "workbench.errors",
    "DataError": "workbench.errors",
    "ExportError": "workbench.errors",
    "QuantizationError": "workbench.errors",
    "AccuracyError": "workbench.errors",
    "TritonExportError": "workbench.errors",
    "TritonServerError": "workbench.errors",
    "MissingDependency": "workbench.errors",
    "DependencyConflict": "workbench.errors",
    "DeviceUnavailable": "workbench.errors",
    "OutputFolderError": "workbench.errors",
    "OutputFolderBusy": "workbench.errors",
    "DiskFullError": "workbench.errors",
    "ServingError": "workbench.errors",
    # model sources and data
    "load_model": "workbench.models",
    "HFModelSource": "workbench.models",
    "ModuleSource": "workbench.models",
    "OnnxSource": "workbench.models",
    "bundled_model_path": "workbench.models",
    "read_sentences": "workbench.data",
    "load_sentence_splits": "workbench.data",
    "SentenceSplits": "workbench.data",
    "tokenize_batches": "workbench.data",
    # tasks and engines (the registries)
    "Task": "workbench.tasks.base",
    "Budget": "workbench.tasks.base",
    "register_task": "workbench.tasks.base",
    "get_task": "workbench.tasks.base",
    "EmbeddingBudget": "workbench.tasks.embedding",
    "ClassificationBudget": "workbench.tasks.classification",
    "Engine": "workbench.engines.base",
    "Candidate": "workbench.engines.base",
    "register_engine": "workbench.engines.base",
    "get_engine": "workbench.engines.base",
    # stages
    "ExportConfig": "workbench.stages.export",
    "export_onnx": "workbench.stages.export",
    "FusionConfig": "workbench.stages.fusion",
    "fuse_transformer": "workbench.stages.fusion",
    "DynamicQuantConfig": "workbench.stages.precision.quantize",
    "quantize_dynamic": "workbench.stages.precision.quantize",
    "AccuracyBudget": "workbench.tasks.embedding",
    "compare_candidates": "workbench.stages.accuracy.compare",
    "BenchmarkConfig": "workbench.stages.benchmark.latency",
    "benchmark": "workbench.stages.benchmark.latency",
    "choose_candidate": "workbench.stages.choose",
    "TritonConfig": "workbench.triton.config",
    "export_triton": "workbench.triton.model",
    "export_triton_ensemble": "workbench.triton.ensemble",
    "parse_model_config": "workbench.triton.config",
    "TritonServer": "workbench.triton.server",
    # text generation (causal LMs with a key/value cache)
    "DecoderExportConfig": "workbench.stages.generation.export",
    "export_decoder": "workbench.stages.generation.export",
    "fuse_decoder": "workbench.stages.generation.fusion",
    "GenerationConfig": "workbench.stages.generation.generate",
    "generate": "workbench.stages.generation.generate",
    "stream": "workbench.stages.generation.generate",
    "GenerationBudget": "workbench.tasks.generation",
    "evaluate_generation": "workbench.stages.generation.accuracy",
    "autofix_decoder": "workbench.stages.generation.accuracy",
    "GenerationBenchmarkConfig": "workbench.stages.generation.benchmark",
    "benchmark_generation": "workbench.stages.generation.benchmark",
    "generation_summary": "workbench.stages.generation.summary",
    "GenerationServingConfig": "workbench.triton.generation",
    "export_triton_generation": "workbench.triton.generation",
    "PaddingPolicy": "workbench.triton.padding",
    "batch_invariance": "workbench.stages.accuracy.invariance",
    "ServingConfig": "workbench.stages.serving.load",
    "SweepConfig": "workbench.stages.serving.sweep",
    "benchmark_serving": "workbench.stages.serving.run",
    "serving_summary": "workbench.stages.serving.summary",
    # runners
    "OnnxRuntimeRunner": "workbench.engines.onnxruntime",
    "PyTorchRunner": "workbench.engines.pytorch",
    # the chained workflow
    "Pipeline": "workbench.pipeline",
    "PipelineParameters": "workbench.pipeline",
    "STEPS": "workbench.pipeline",
    "step": "workbench.pipeline",
    "format_summary": "workbench.summary",
    "Recipe": "workbench.recipe",
    "run_recipe": "workbench.recipe",
    "save_recipe": "workbench.recipe",
    "check_parameters": "workbench.notebook",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from workbench.data import SentenceSplits, load_sentence_splits, read_sentences, tokenize_batches
    from workbench.engines.base import Candidate, Engine, get_engine, register_engine
    from workbench.engines.onnxruntime import OnnxRuntimeRunner
    from workbench.engines.pytorch import PyTorchRunner
    from workbench.errors import (
        AccuracyError,
        ConfigError,
        DataError,
        DependencyConflict,
        DeviceUnavailable,
        DiskFullError,
        ExportError,
        MissingDependency,
        ModelSourceError,
        OutputFolderBusy,
        OutputFolderError,
        QuantizationError,
        ServingError,
        TritonExportError,
        TritonServerError,
        WorkbenchError,
    )
    from workbench.models import HFModelSource, ModuleSource, OnnxSource, bundled_model_path, load_model
    from workbench.notebook import check_parameters
    from workbench.pipeline import STEPS, Pipeline, PipelineParameters, step
    from workbench.recipe import Recipe, run_recipe, save_recipe
    from workbench.stages.accuracy.compare import compare_candidates
    from workbench.stages.accuracy.invariance import batch_invariance
    from workbench.stages.benchmark.latency import BenchmarkConfig, benchmark
    from workbench.stages.choose import choose_candidate
    from workbench.stages.export import ExportConfig, export_onnx
    from workbench.stages.fusion import FusionConfig, fuse_transformer
    from workbench.stages.generation.accuracy import autofix_decoder, evaluate_generation
    from workbench.stages.generation.benchmark import GenerationBenchmarkConfig, benchmark_generation
    from workbench.stages.generation.export import DecoderExportConfig, export_decoder
    from workbench.stages.generation.fusion import fuse_decoder
    from workbench.stages.generation.generate import GenerationConfig, generate, stream
    from workbench.stages.generation.summary import generation_summary
    from workbench.stages.precision.quantize import DynamicQuantConfig, quantize_dynamic
    from workbench.stages.serving.load import ServingConfig
    from workbench.stages.serving.run import benchmark_serving
    from workbench.stages.serving.summary import serving_summary
    from workbench.stages.serving.sweep import SweepConfig
    from workbench.summary import format_summary
    from workbench.tasks.base import Budget, Task, get_task, register_task
    from workbench.tasks.classification import ClassificationBudget
    from workbench.tasks.embedding import AccuracyBudget, EmbeddingBudget
    from workbench.tasks.generation import GenerationBudget
    from workbench.triton.config import TritonConfig, parse_model_config
    from workbench.triton.ensemble import export_triton_ensemble
    from workbench.triton.generation import GenerationServingConfig, export_triton_generation
    from workbench.triton.model import export_triton
    from workbench.triton.padding import PaddingPolicy
    from workbench.triton.server import TritonServer
