"""The generation path: the Pipeline's steps, declared again for causal LMs (a KV-cache decoder, weight-only
precision, generation metrics, generation timings, a streaming Triton model).

`Pipeline.from_parameters` (and the guided Workbench) pick this class for a model whose task is
"text-generation": the step names are the Pipeline's, so the quickstart notebook's cells, recipes and the
Workbench's panels are the same; what each step does is the decoder's version of it:

| step | for a causal LM |
| --- | --- |
| export | one ONNX decoder with cache inputs and outputs, checked against transformers (several prompt/cache lengths) |
| fuse | onnxruntime's GPT-2 family fusions (LayerNorm, GELU; Attention where it matches), with the report |
| quantize | INT8 weight-only (MatMulNBits, INT8 dot products) |
| quantize_smoothquant | INT4 weight-only (MatMulNBits): a decoder's second, smaller candidate |
| compare | teacher-forced next-token agreement, perplexity ratio, logits cosine, greedy-continuation agreement |
| benchmark | time to first token, inter-token latency and tokens/s against PyTorch `generate` |
| choose | the fastest candidate (decode tokens/s) that meets the generation budget |
| export_triton | a decoupled Python model that streams generated text |
| write_summary | summary.json with its `generation` section |
"""

from __future__ import annotations

from typing import Any

from workbench.engines.base import Candidate
from workbench.errors import ModelSourceError, StepNotApplicable
from workbench.models import HFModelSource
from workbench.pipeline import Pipeline, pipeline_for_task, step


def _generation_candidate(pipeline: Pipeline, report: Any, name: str) -> dict[str, Any]:
    if name not in report:
        return {}
    accuracy = report[name]
    values = dict(accuracy.values)
    return {
        "cosine_mean": values.get("logits_cosine_mean"),
        "cosine_min": values.get("logits_cosine_min"),
        "meets_budget": bool(accuracy.meets_budget),
        "failures": list(accuracy.failures),
        "metrics": values,
    }


def _generation_timings(pipeline: Pipeline, timings: Any, name: str) -> dict[str, Any]:
    rows = [t for t in timings.timings if t.name == name]
    if not rows:
        return {}
    first = min(rows, key=lambda t: (t.batch, t.prompt_length))
    return {"latency_ms_p50": first.itl_ms_p50, "tokens_per_s": first.tokens_per_s, "ttft_ms_p50": first.ttft_ms_p50}


def _generation_benchmark(pipeline: Pipeline, timings: Any) -> dict[str, Any]:
    pytorch = [t for t in timings.timings if t.name == "pytorch"]
    first = min(pytorch, key=lambda t: (t.batch, t.prompt_length)) if pytorch else None
    return {
        "pytorch_latency_ms_p50": first.itl_ms_p50 if first else None,
        "machine": timings.machine,
        "benchmark": {"batch": 1, "statistic": "inter-token latency"},
    }


@pipeline_for_task("text-generation")
class GenerationPipeline(Pipeline):
    """The Pipeline for causal LMs: same steps, the decoder's version of each (see the module docstring)."""

    def _spec(self) -> Any:
        return self.results["export"].spec

    @property
    def hf_source(self) -> HFModelSource:
        """The Hugging Face model folder this pipeline generates with (a causal LM needs its config and tokenizer)."""
        if not isinstance(self.source, HFModelSource):
            raise ModelSourceError(
                f"Text generation needs a Hugging Face model folder, not a {type(self.source).__name__}.",
                fix="pass model_path= the folder written by save_pretrained()",
            )
        return self.source

    @step(
        title="Export to ONNX: a decoder with its key/value cache",
        short="Export",
        configs=("export_config",),
        summary=lambda p, r: {"export_max_abs_error": r.max_abs_error},
        blurb="One ONNX decoder for the prompt and every decode step (cache in, cache out), checked against "
        "transformers at several prompt and cache lengths.",
    )
    def export(self) -> Any:
        """Export the causal LM with past key values, checked against transformers."""
        from workbench.stages.generation.export import DecoderExportConfig, export_decoder

        config = DecoderExportConfig(exporter=self.export_config.exporter, opset=max(self.export_config.opset, 17))
        result = export_decoder(self.hf_source, self.output_dir / "model.onnx", config)
        self.candidates["reference"] = Candidate("reference", result.path)
        self.candidates["fp32"] = Candidate("fp32", result.path)
        return result

    @step(
        title="Graph surgery: fuse the decoder's subgraphs",
        short="Graph surgery",
        needs=("export",),
        makes_candidates=True,
        blurb="onnxruntime's GPT-2 family fusions (LayerNorm, GELU, Attention where the pattern matches).",
    )
    def fuse(self) -> Any:
        """Fuse the decoder's subgraphs (the fusion report says what fused)."""
        from workbench.stages.generation.fusion import decoder_fusion_config, fuse_decoder

        result = fuse_decoder(
            self.candidates["reference"],
            self.output_dir / "model_fused.onnx",
            decoder_fusion_config(self.hf_source.config),
            spec=self._spec(),
        )
        self.candidates["fp32_fused"] = Candidate("fp32_fused", result.path)
        return result

    def _weight_only(self, method: str) -> Any:
        from workbench.stages.precision.plan import PrecisionPlan

        name = method
        result = PrecisionPlan.preset(f"cpu_{method}").convert(
            self._base_model(), self.output_dir / f"model_{name}.onnx"
        )
        self.candidates[name] = Candidate(name, result.path, precision=method)
        return result

    @step(
        title="Precision: INT8 weight-only",
        short="Precision",
        needs=("export",),
        reads=("fuse",),
        makes_candidates=True,
        blurb="MatMul weights in INT8 blocks (MatMulNBits), INT8 dot products.",
    )
    def quantize(self) -> Any:
        """INT8 weight-only quantization of the (fused) decoder."""
        return self._weight_only("int8_weight_only")

    @step(
        title="Precision: INT4 weight-only",
        short="INT4",
        needs=("export",),
        reads=("fuse",),
        makes_candidates=True,
        blurb="MatMul weights in INT4 blocks (MatMulNBits): the smallest, fastest decoder.",
    )
    def quantize_smoothquant(self) -> Any:
        """INT4 weight-only quantization: a decoder's second candidate (SmoothQuant's place for encoders)."""
        return self._weight_only("int4_weight_only")

    @step(
        title="OpenVINO FP32",
        short="OpenVINO FP32",
        needs=("export",),
        makes_candidates=True,
        skippable=True,
        blurb="Not offered for decoders yet: the generation loop runs over ONNX Runtime decoders here.",
    )
    def openvino_fp32(self) -> Any:
        """Not for decoders yet (the Pipeline's OpenVINO candidates are encoders'): run_all skips it."""
        raise StepNotApplicable(
            "OpenVINO candidates of a decoder are not offered yet: the pipeline's OpenVINO steps convert encoders.",
            fix="use the weight-only ONNX Runtime candidates, or NNCF's weight compression "
            "(PrecisionPlan.preset('openvino_int4_weight_only')) through the library",
        )

    @step(
        title="Precision: OpenVINO INT8 (NNCF)",
        short="OpenVINO INT8",
        needs=("export",),
        makes_candidates=True,
        skippable=True,
        blurb="Not offered for decoders yet (static INT8 calibration is for encoders; decoders use weight-only).",
    )
    def openvino_int8(self) -> Any:
        """Not for decoders yet: run_all skips it."""
        raise StepNotApplicable(
            "NNCF static INT8 is the encoders' OpenVINO candidate; decoders are quantized weight-only.",
            fix="use PrecisionPlan.preset('openvino_int8_weight_only') through the library",
        )

    @step(
        title="Accuracy against the FP32 decoder",
        short="Accuracy",
        needs=("export",),
        configs=("budget",),
        reads_candidates=True,
        candidate_summary=_generation_candidate,
        summary=lambda p, r: {"budget": r.budget.to_dict(), "task": p.task.name},
        blurb="Teacher-forced next-token agreement, perplexity relative to FP32, logits cosine and greedy "
        "continuations, judged by the generation budget.",
    )
    def compare(self) -> Any:
        """Every candidate's generation metrics against the FP32 decoder."""
        from workbench.stages.generation.accuracy import evaluate_generation
        from workbench.tasks.generation import load_prompts

        texts = list(self.sentences.evaluation)
        candidates = {n: c for n, c in self.candidate_models.items()}
        return evaluate_generation(
            self.candidates["reference"],
            candidates,
            self.tokenizer,
            budget=self.budget,  # type: ignore[arg-type]  # the generation task's budget is a GenerationBudget
            spec=self._spec(),
            texts=texts,
            prompts=load_prompts(self.parameters.data_dir),
            sequence_length=self.parameters.sequence_length,
            threads=self.parameters.threads,
        )

    @step(
        title="Benchmark: time to first token, inter-token latency, tokens/s",
        short="Benchmark",
        needs=("export",),
        reads_candidates=True,
        parameters=("benchmark_batch_sizes", "benchmark_iterations"),
        candidate_summary=_generation_timings,
        summary=_generation_benchmark,
        blurb="PyTorch generate (the baseline) and every candidate's generation loop with its cache, interleaved.",
    )
    def benchmark(self) -> Any:
        """Generation timings of PyTorch and every candidate."""
        from workbench.stages.generation.benchmark import GenerationBenchmarkConfig, benchmark_generation
        from workbench.stages.generation.export import load_causal_lm

        config = GenerationBenchmarkConfig(
            batch_sizes=self.parameters.benchmark_batch_sizes,
            iterations=self.parameters.benchmark_iterations,
            prompt_lengths=(min(16, self.parameters.sequence_length),),
            new_tokens=16,
            threads=self.parameters.threads,
        )
        model, _ = load_causal_lm(self.hf_source)
        return benchmark_generation(self.candidate_models, self._spec(), config, pytorch_model=model)

    @step(
        title="Choose the decoder to ship",
        short="Choice",
        needs=("compare", "benchmark"),
        args=("batch",),
        summary=lambda p, c: {"chosen": c.name, "chosen_reason": c.reason},
        details=lambda choice: {"chosen": choice.name},
        blurb="The fastest candidate (decode tokens/s) that meets the generation budget.",
    )
    def choose(self, batch: int = 1) -> Any:
        """The fastest decoder that meets the budget (the FP32 one when none does)."""
        from workbench.stages.generation.summary import choose_generation_candidate

        return choose_generation_candidate(self.results["compare"], self.results["benchmark"], reference="fp32")

    @step(
        title="Deploy: a streaming Triton model",
        short="Deploy",
        needs=("choose",),
        parameters=("triton_model_name", "overwrite"),
        summary=lambda p, r: {"triton_repository": str(r.repository), "triton_model": r.model_name},
        blurb="A decoupled Python model that runs the generation loop with its cache and streams text back.",
    )
    def export_triton(self) -> Any:
        """The chosen decoder as a streaming Triton repository."""
        from workbench.pipeline import _triton_name
        from workbench.triton.generation import GenerationServingConfig, export_triton_generation

        choice = self.results["choose"]
        name = self.parameters.triton_model_name or _triton_name(self.source.name)
        return export_triton_generation(
            self.candidates[choice.name],
            self.output_dir / "triton_repository",
            self.hf_source.path,
            GenerationServingConfig(model_name=name),
            provenance={"chosen": choice.name, "chosen_reason": choice.reason},
            overwrite=self.parameters.overwrite,
        )

    def extra_summary(self) -> dict[str, Any]:
        """summary.json's `generation` section (workbench.stages.generation.summary.generation_summary)."""
        from workbench.stages.generation.summary import generation_summary

        if "export" not in self.results:
            return {}
        return {
            "generation": generation_summary(
                spec=self._spec(),
                candidates={n: c for n, c in self.candidates.items() if n != "reference"},
                export=self.results.get("export"),
                fusion=self.results.get("fuse"),
                accuracy=self.results.get("compare"),
                benchmark=self.results.get("benchmark"),
                choice=self.results.get("choose"),
                triton=self.results.get("export_triton"),
            )
        }
