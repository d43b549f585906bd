"""The deployment views: time the candidates, choose one, export it to a Triton model repository.

    BenchmarkView(candidates, feeds_for, pytorch_module=module)   # Run: benchmark_candidates(...) -> benchmark
    ChoiceView(report, timings)                                   # Run: choose_candidate(...)
    ExportView(model_path, repository)                            # Run: export_triton(...)

Each view is a shell over ONE library call (see workbench.ui.base.StageView); nothing heavy is imported when a
view is built, and each library call imports what it needs when it runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from workbench.stages.benchmark.latency import BenchmarkConfig  # light: numpy only
from workbench.ui.base import StageView
from workbench.ui.controls import controls_for

__all__ = ["BenchmarkView", "ChoiceView", "ExportView"]


class BenchmarkView(StageView):
    """Time every candidate (and the PyTorch module, the baseline), interleaved, in this process.

    Controls: the fields of BenchmarkConfig (batch sizes, sequence lengths, warm-up, iterations, threads, time
    budget). Run calls `workbench.stages.benchmark.latency.benchmark_candidates`, which builds one runner per candidate
    (onnxruntime spinning off, threads set explicitly) and calls `benchmark`. Shows the table, latency vs batch
    size and, with a PyTorch module, the speed-up over it.

    Args:
        candidates: Name -> .onnx file.
        feeds_for: (batch, sequence) -> feed dict (e.g. `workbench.stages.benchmark.latency.feeds_from_sentences`).
        pytorch_module: The torch.nn.Module the candidates came from, timed as "pytorch"; None: no baseline.
        config: The settings the controls start from; default BenchmarkConfig().
        title: Heading of the view.

    Attributes:
        result: The BenchmarkResult of the last successful run.
    """

    title = "Benchmark: latency of every candidate"
    config_cls = BenchmarkConfig

    def __init__(
        self,
        candidates: Mapping[str, str | os.PathLike[str]],
        feeds_for: Callable[[int, int], Mapping[str, Any]],
        *,
        pytorch_module: Any = None,
        config: Any = None,
        title: str | None = None,
    ) -> None:
        self.candidates = dict(candidates)
        self.feeds_for = feeds_for
        self.pytorch_module = pytorch_module
        super().__init__(title=title, config_base=config)

    def _run(self) -> Any:
        from workbench.stages.benchmark import latency as stage

        return stage.benchmark_candidates(
            self.candidates, self.feeds_for, self.config(), pytorch_module=self.pytorch_module
        )

    def _show(self, result: Any) -> None:
        self.show(result)
        self.show(result.latency_figure())
        if "pytorch" in result.names:
            self.show(result.speedup_figure("pytorch"))


class ChoiceView(StageView):
    """Choose the candidate to ship from an accuracy comparison and a benchmark of the same candidates.

    Controls: objective ("latency" or "throughput"), batch size and sequence length (those benchmarked; changing
    the objective moves the batch size to its default: 1 for latency, the largest for throughput) and a latency
    ceiling on p90 in ms (empty: none). Run calls `workbench.stages.choose.choose_candidate`; the view shows
    the Choice, the candidates table and the latency-vs-accuracy chart with its Pareto front.

    Args:
        accuracy: A ComparisonReport (workbench.stages.accuracy.compare.compare_candidates, or Pipeline.compare()).
        timings: A BenchmarkResult of the same candidates.
        title: Heading of the view.

    Attributes:
        result: The Choice of the last successful run.
        table: The candidates table shown with it.
    """

    title = "Choose the candidate to ship"

    def __init__(self, accuracy: Any, timings: Any, *, title: str | None = None) -> None:
        self.accuracy = accuracy
        self.timings = timings
        self.table: Any = None
        super().__init__(title=title)

    def _controls(self) -> dict[str, widgets.Widget]:
        from workbench.stages.choose import OBJECTIVES, ChoiceConfig

        batches = tuple(self.timings.config.batch_sizes)
        seqs = tuple(self.timings.config.sequence_lengths)
        self._default_batch = {"latency": 1 if 1 in batches else min(batches), "throughput": max(batches)}
        base = ChoiceConfig(batch=self._default_batch["latency"], seq=seqs[0])
        controls = controls_for(
            base,
            choices={"objective": OBJECTIVES, "batch": batches, "seq": seqs},
            labels={"seq": "sequence length", "latency_ceiling_ms": "latency ceiling (ms, p90)"},
        )
        controls["latency_ceiling_ms"].placeholder = "empty: no ceiling"
        controls["objective"].observe(self._objective_changed, names="value")
        return controls

    def _objective_changed(self, change: dict[str, Any]) -> None:
        self.controls["batch"].value = self._default_batch[change["new"]]

    def config(self) -> Any:
        from workbench.stages.choose import ChoiceConfig
        from workbench.ui.controls import config_from_controls

        return config_from_controls(ChoiceConfig, self.controls)

    def _run(self) -> Any:
        from workbench.stages import choose as stage

        config = self.config()
        return stage.choose_candidate(
            self.accuracy,
            self.timings,
            batch=config.batch,
            seq=config.seq,
            objective=config.objective,
            latency_ceiling_ms=config.latency_ceiling_ms,
        )

    def _show(self, choice: Any) -> None:
        from workbench.stages.choose import candidates_table, pareto_figure

        ceiling = choice.constraints.get("latency_ceiling_ms")
        self.table = candidates_table(self.accuracy, self.timings, choice.batch, choice.seq, latency_ceiling_ms=ceiling)
        self.show(choice)
        self.show(self.table)
        self.show(pareto_figure(self.accuracy, self.timings, choice.batch, choice.seq, latency_ceiling_ms=ceiling))


class ExportView(StageView):
    """Write a model into a Triton model repository, with a strictly checked config.pbtxt.

    Controls: the fields of TritonConfig (model name, batching, instances, version, ...) and "overwrite"
    (replace an existing model folder of the same name; without it an existing folder is an error and nothing
    changes). Run calls `workbench.triton.model.export_triton` (with a tokenizer folder:
    `export_triton_ensemble`) and shows what was written and the config.

    Args:
        model_path: The .onnx file to serve (the chosen candidate).
        repository: The model repository folder (created if missing; other models in it are left alone).
        tokenizer_dir: A Hugging Face tokenizer folder: Run then writes the text-in, embeddings-out ensemble
            (tokenizer + model + pooling, `workbench.triton.ensemble.export_triton_ensemble`) instead of the
            model alone.
        sequence_length: Tokens per text the served tokenizer pads and truncates to (with tokenizer_dir).
        config: The TritonConfig the controls start from; default TritonConfig().
        overwrite: The overwrite checkbox's starting value.
        title: Heading of the view.

    Attributes:
        result: The TritonExportResult of the last successful run.
        overwrite: The overwrite checkbox (also `controls["overwrite"]`).
    """

    title = "Export to a Triton model repository"

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        repository: str | os.PathLike[str],
        tokenizer_dir: str | os.PathLike[str] | None = None,
        *,
        config: Any = None,
        overwrite: bool = False,
        sequence_length: int = 128,
        title: str | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        self.sequence_length = sequence_length
        self.repository = Path(repository)
        self.tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir is not None else None
        self._overwrite_default = overwrite
        super().__init__(title=title, config_base=config)

    def _controls(self) -> dict[str, widgets.Widget]:
        from workbench.triton.config import INSTANCE_KINDS, TritonConfig

        controls = controls_for(
            self.config_base if self.config_base is not None else TritonConfig,
            choices={"instance_kind": INSTANCE_KINDS},
        )
        self.overwrite = widgets.Checkbox(
            value=self._overwrite_default,
            description="overwrite",
            indent=True,
            tooltip="Replace an existing model folder of the same name (only once the new one is complete)",
        )
        self.overwrite.style = {"description_width": "14em"}
        controls["overwrite"] = self.overwrite
        return controls

    def config(self) -> Any:
        from workbench.triton.config import TritonConfig
        from workbench.ui.controls import config_from_controls

        return config_from_controls(TritonConfig, self.controls, base=self.config_base)

    def _run(self) -> Any:
        from workbench.triton import ensemble, model

        config = self.config()
        overwrite = bool(self.overwrite.value)
        if self.tokenizer_dir is None:
            return model.export_triton(self.model_path, self.repository, config, overwrite=overwrite)
        return ensemble.export_triton_ensemble(
            self.model_path,
            self.repository,
            self.tokenizer_dir,
            config,
            sequence_length=self.sequence_length,
            overwrite=overwrite,
        )
