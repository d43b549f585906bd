"""Graph surgery stage: transformer fusion (more edits arrive with the graph-surgery issue)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from workbench._lazy import require
from workbench.config import StageConfig, check_choice
from workbench.errors import ConfigError, WorkbenchError
from workbench.models import HFModelSource, ModelSource

# onnxruntime.transformers' model types for encoder models this workbench targets; the optimizer knows more.
SUPPORTED_MODEL_TYPES = ("bert", "bart", "gpt2", "t5", "vit", "clip", "swin")
# Hugging Face model_type -> the onnxruntime optimizer's model_type
_HF_TO_ORT_MODEL_TYPE = {"bert": "bert", "roberta": "bert", "distilbert": "bert", "xlm-roberta": "bert",
                         "electra": "bert", "mpnet": "bert", "camembert": "bert", "albert": "bert",
                         "bart": "bart", "gpt2": "gpt2", "t5": "t5", "vit": "vit", "clip": "clip", "swin": "swin"}
# op types the report counts; the optimizer's own statistics cover these and more
FUSED_OP_TYPES = ("EmbedLayerNormalization", "Attention", "MultiHeadAttention", "SkipLayerNormalization",
                  "LayerNormalization", "BiasGelu", "FastGelu", "Gelu", "SkipSimplifiedLayerNormalization")


@dataclass(frozen=True)
class FusionConfig(StageConfig):
    """Options for onnxruntime's transformer optimizer.

    Attributes:
        model_type: The optimizer's model family ("bert" covers BERT, RoBERTa, DistilBERT, MiniLM, ...).
        num_heads: Attention heads; 0 lets the optimizer detect them from the graph.
        hidden_size: Hidden size; 0 lets the optimizer detect it.
        opt_level: onnxruntime graph optimizations to bake in before fusing: 0 keeps the graph portable
            across execution providers (recommended), 1/2/99 bake in provider-specific rewrites.
        atol: Largest allowed absolute difference between the fused and unfused model on the check inputs, at
            token positions (padded positions are not compared: see `max_abs_difference`).
    """

    model_type: str = "bert"
    num_heads: int = 0
    hidden_size: int = 0
    opt_level: int = 0
    atol: float = 1e-4

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"bert": {}, "minilm": {"num_heads": 12, "hidden_size": 384}}

    def __post_init__(self) -> None:
        check_choice(self, "model_type", SUPPORTED_MODEL_TYPES)
        check_choice(self, "opt_level", (0, 1, 2, 99))
        if self.num_heads < 0 or self.hidden_size < 0:
            raise ConfigError("FusionConfig.num_heads and hidden_size must be >= 0 (0 = detect from the graph).")
        if self.num_heads and self.hidden_size and self.hidden_size % self.num_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}.",
                fix="read both from the model's config.json, or leave them 0 to detect them",
            )

    @classmethod
    def for_source(cls, source: ModelSource, **overrides: Any) -> FusionConfig:
        """A config with model type, heads and hidden size read from a Hugging Face model's config."""
        values: dict[str, Any] = {}
        if isinstance(source, HFModelSource):
            hf_type = source.model_type
            if hf_type not in _HF_TO_ORT_MODEL_TYPE:
                raise ConfigError(
                    f"No transformer fusion is known for model_type {hf_type!r}.",
                    expected=f"one of {sorted(_HF_TO_ORT_MODEL_TYPE)}",
                    fix="skip fusion for this model, or pass FusionConfig(model_type=...) explicitly",
                )
            values = {"model_type": _HF_TO_ORT_MODEL_TYPE[hf_type],
                      "num_heads": source.num_heads or 0, "hidden_size": source.hidden_size or 0}
        return cls(**{**values, **overrides})


@dataclass(frozen=True)
class FusionResult:
    """The fused model and what fused."""

    path: Path
    config: FusionConfig
    fused_ops: dict[str, int]
    op_counts_before: dict[str, int]
    op_counts_after: dict[str, int]
    max_abs_diff: float | None
    seconds: float

    @property
    def nodes_before(self) -> int:
        return sum(self.op_counts_before.values())

    @property
    def nodes_after(self) -> int:
        return sum(self.op_counts_after.values())

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "config": self.config.to_dict(), "fused_ops": self.fused_ops,
                "nodes_before": self.nodes_before, "nodes_after": self.nodes_after,
                "max_abs_diff": self.max_abs_diff, "seconds": self.seconds}

    def _repr_html_(self) -> str:
        fused = ", ".join(f"{k} {v}" for k, v in self.fused_ops.items() if v) or "nothing"
        check = "not checked" if self.max_abs_diff is None else f"max abs diff vs unfused {self.max_abs_diff:.2e}"
        return (f"<b>Fused</b> <code>{self.path}</code>: {fused}. Nodes {self.nodes_before} -> {self.nodes_after}; "
                f"{check}; {self.seconds:.1f} s.")


def _op_counts(model: Any) -> dict[str, int]:
    return dict(Counter(node.op_type for node in model.graph.node))


def fuse_proto(model: Any, config: FusionConfig = FusionConfig()) -> tuple[Any, dict[str, int]]:
    """Fuse an in-memory model; returns (fused model, fused op counts). `model` is not modified."""
    onnx = require("onnx", purpose="Transformer fusion")
    optimizer = require("onnxruntime.transformers.optimizer", purpose="Transformer fusion")
    private = onnx.ModelProto()
    private.CopyFrom(model)  # the optimizer edits the proto it is given
    try:
        optimized = optimizer.optimize_model(private, model_type=config.model_type, num_heads=config.num_heads,
                                             hidden_size=config.hidden_size, opt_level=config.opt_level)
    except Exception as exc:
        raise WorkbenchError(
            f"onnxruntime's transformer optimizer failed: {type(exc).__name__}: {exc}",
            fix="check FusionConfig.model_type, num_heads and hidden_size against the model's config.json",
        ) from exc
    statistics = optimized.get_fused_operator_statistics()
    # what the optimizer's own save does: sort the graph, declare the com.microsoft opset of the fused ops
    optimized.topological_sort()
    fused = optimized.model
    if any(n.domain == "com.microsoft" for n in fused.graph.node) and not any(
        o.domain == "com.microsoft" for o in fused.opset_import
    ):
        fused.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return fused, {op: int(statistics.get(op, 0)) for op in FUSED_OP_TYPES}


def fuse_transformer(
    model_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    config: FusionConfig = FusionConfig(),
    *,
    check_feeds: list[dict[str, np.ndarray]] | None = None,
) -> FusionResult:
    """Fuse attention, layer-norm and GELU subgraphs with onnxruntime's transformer optimizer.

    The input file is not modified. With `check_feeds`, the fused model is run against the input model and
    the stage raises if any output differs by more than `config.atol`; the fused file is written only then.

    Raises:
        WorkbenchError: The optimizer failed, or the fused model does not match the input model.
    """
    from workbench.onnx_io import load_onnx, save_onnx

    started = time.perf_counter()
    original = load_onnx(model_path)
    fused, fused_ops = fuse_proto(original, config)
    max_abs_diff = None
    if check_feeds:
        max_abs_diff = max_output_difference(original, fused, check_feeds)
        if max_abs_diff > config.atol:
            raise WorkbenchError(
                f"The fused model differs from its input by {max_abs_diff:.3g} max abs (atol {config.atol:g}); "
                "it was not written.",
                fix="pass the right num_heads / hidden_size, or a looser FusionConfig.atol if the difference is expected",
            )
    save_onnx(fused, output_path)
    return FusionResult(
        path=Path(output_path),
        config=config,
        fused_ops=fused_ops,
        op_counts_before=_op_counts(original),
        op_counts_after=_op_counts(fused),
        max_abs_diff=max_abs_diff,
        seconds=time.perf_counter() - started,
    )


def max_output_difference(model_a: Any, model_b: Any, feeds: list[dict[str, np.ndarray]]) -> float:
    """Largest absolute difference between two models' common outputs over `feeds` (in-memory models)."""
    from workbench.backends.onnxrt import OnnxRuntimeRunner
    from workbench.onnx_io import save_onnx

    with tempfile.TemporaryDirectory(prefix="workbench-check-") as folder:
        path_a = save_onnx(model_a, Path(folder) / "a.onnx")
        path_b = save_onnx(model_b, Path(folder) / "b.onnx")
        worst = 0.0
        with OnnxRuntimeRunner(path_a) as runner_a, OnnxRuntimeRunner(path_b) as runner_b:
            for feed in feeds:
                out_a, out_b = runner_a.infer(feed), runner_b.infer(feed)
                for name in set(out_a) & set(out_b):
                    worst = max(worst, max_abs_difference(out_a[name], out_b[name], feed))
        return worst


def max_abs_difference(a: np.ndarray, b: np.ndarray, feeds: dict[str, np.ndarray]) -> float:
    """Largest absolute difference, over the positions that carry tokens.

    Outputs shaped [batch, sequence, ...] are compared only where `attention_mask` is 1: padded positions hold
    values nothing reads (pooling and attention ignore them) and fused Attention computes them differently
    (measured on MiniLM: 3e-6 on tokens, 1.6e-4 on padding).
    """
    mask = feeds.get("attention_mask")
    if mask is not None and a.ndim >= 2 and a.shape[:2] == mask.shape and b.shape == a.shape:
        keep = mask.astype(bool)
        a, b = a[keep], b[keep]
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0))


# ----------------------------------------------------------------------------------------------------------
# Running in-memory models, checking edits, and the surgery plan runner
# ----------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def model_session(model: Any, output_names: Sequence[str] | None = None) -> Iterator[Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]]:
    """An in-memory model ready to run many feed dicts: saved and loaded once, for as long as the block lasts.

    Yields a function feed dict -> outputs; raises WorkbenchError when onnxruntime cannot run a feed.
    """
    from workbench.backends.onnxrt import OnnxRuntimeRunner
    from workbench.onnx_io import save_onnx

    with tempfile.TemporaryDirectory(prefix="workbench-run-") as folder:
        path = save_onnx(model, Path(folder) / "model.onnx")
        with OnnxRuntimeRunner(path, output_names=output_names) as runner:

            def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
                try:
                    return runner.infer(dict(feeds))
                except Exception as exc:
                    raise WorkbenchError(
                        f"onnxruntime could not run the model: {type(exc).__name__}: {exc}",
                        fix="check the feeds' names, dtypes and shapes against the model's inputs",
                    ) from exc

            yield run


def run_model(model: Any, feeds_list: list[dict[str, np.ndarray]], output_names: list[str] | None = None,
              *, repeats: int = 0) -> tuple[list[dict[str, np.ndarray]], float | None]:
    """Run an in-memory model on each feed dict; with `repeats`, also the median latency (ms) of feeds[0]."""
    with model_session(model, output_names) as run:
        results = [run(feeds) for feeds in feeds_list]
        latency = None
        if repeats and feeds_list:
            timings = []
            for _ in range(repeats):
                started = time.perf_counter()
                run(feeds_list[0])
                timings.append((time.perf_counter() - started) * 1000.0)
            latency = float(np.median(timings))
    return results, latency


def run_tensors(model: Any, feeds: dict[str, np.ndarray], names: Any) -> dict[str, np.ndarray]:
    """Values of any tensors of `model` (graph inputs, intermediates or outputs) on one feed dict."""
    from workbench.stages.edits import AddOutputs

    names = list(names)
    values = {n: feeds[n] for n in names if n in feeds}
    wanted = [n for n in names if n not in feeds]
    if wanted:
        exposed = AddOutputs(tuple(wanted)).apply(model)
        (outputs,), _ = run_model(exposed, [feeds], wanted)
        values.update(outputs)
    return values


@dataclass(frozen=True)
class GraphDiff:
    """What an edit changed: op counts, node count, size and (optionally) latency on the sample inputs."""

    op_counts_before: dict[str, int]
    op_counts_after: dict[str, int]
    size_mb_before: float
    size_mb_after: float
    latency_ms_before: float | None = None
    latency_ms_after: float | None = None

    @property
    def nodes_before(self) -> int:
        return sum(self.op_counts_before.values())

    @property
    def nodes_after(self) -> int:
        return sum(self.op_counts_after.values())

    @property
    def op_changes(self) -> dict[str, int]:
        """op type -> change in count, for op types whose count changed."""
        ops = set(self.op_counts_before) | set(self.op_counts_after)
        changes = {op: self.op_counts_after.get(op, 0) - self.op_counts_before.get(op, 0) for op in sorted(ops)}
        return {op: delta for op, delta in changes.items() if delta}

    def to_dict(self) -> dict[str, Any]:
        return {"nodes_before": self.nodes_before, "nodes_after": self.nodes_after, "op_changes": self.op_changes,
                "size_mb_before": self.size_mb_before, "size_mb_after": self.size_mb_after,
                "latency_ms_before": self.latency_ms_before, "latency_ms_after": self.latency_ms_after}


@dataclass(frozen=True)
class EditCheck:
    """How the edited model compares with its input model on the sample inputs."""

    compared: tuple[tuple[str, str], ...]  # (tensor of the input model, output of the edited model)
    max_abs_diff: float
    atol: float
    enforced: bool  # False for edits allowed to change values (a lossy cast): reported, never raised

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.atol

    def to_dict(self) -> dict[str, Any]:
        return {"compared": [list(pair) for pair in self.compared], "max_abs_diff": self.max_abs_diff,
                "atol": self.atol, "enforced": self.enforced, "passed": self.passed}


@dataclass(frozen=True)
class EditReport:
    """One edit: what it was, what it changed, how it checked out."""

    edit: Any
    diff: GraphDiff
    check: EditCheck | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"edit": self.edit.to_plan_entry(), "diff": self.diff.to_dict(),
                "check": self.check.to_dict() if self.check else None, "seconds": self.seconds}

    def _repr_html_(self) -> str:
        return _reports_html([self])


def _model_size_mb(model: Any) -> float:
    return sum(np.prod(t.dims, dtype=np.int64) * _bytes_per_element(t.data_type) for t in model.graph.initializer) / 1e6


def _bytes_per_element(data_type: int) -> int:
    return {1: 4, 2: 1, 3: 1, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}.get(data_type, 4)


def check_edit(before: Any, after: Any, edit: Any, feeds: list[dict[str, np.ndarray]], atol: float = 1e-4,
               *, repeats: int = 0) -> tuple[EditCheck, float | None, float | None]:
    """Run `before` and `after` on the same sample inputs and compare the tensors `edit` says must agree.

    Returns the check and, with `repeats`, the median latency of each model on the first feed dict (ms).
    """
    pairs = edit.compare_pairs(before, after)
    if not pairs:
        raise WorkbenchError(f"{edit.describe()} leaves no output to compare with the input model.",
                             fix="keep at least one output, or check this edit by hand")
    before_names = [b for b, _ in pairs]
    exposed = before
    if any(name not in {o.name for o in before.graph.output} for name in before_names):
        from workbench.stages.edits import AddOutputs

        exposed = AddOutputs(tuple(before_names)).apply(before)
    adapted = [edit.adapt_feeds(f, before) for f in feeds]
    reference_feeds = adapted if edit.reference_takes_adapted_feeds else feeds
    expected, latency_before = run_model(exposed, reference_feeds, before_names, repeats=repeats)
    actual, latency_after = run_model(after, adapted, [a for _, a in pairs], repeats=repeats)
    worst = 0.0
    for exp, act, feed in zip(expected, actual, reference_feeds):
        for b, a in pairs:
            if exp[b].shape != act[a].shape:
                raise WorkbenchError(f"{edit.describe()}: output {a!r} has shape {act[a].shape}, "
                                     f"but {b!r} had {exp[b].shape} before the edit.")
            worst = max(worst, max_abs_difference(exp[b], act[a], feed))
    enforced = edit.preserves_outputs and not getattr(edit, "lossy", False)
    return EditCheck(tuple(pairs), worst, atol, enforced), latency_before, latency_after


def apply_edit(model: Any, edit: Any, *, check_feeds: list[dict[str, np.ndarray]] | None = None,
               atol: float = 1e-4, latency_repeats: int = 0) -> tuple[Any, EditReport]:
    """Apply one edit to an in-memory model and check it; returns (edited model, report).

    Raises:
        WorkbenchError: The edit cannot apply, or (for an edit that must preserve outputs) the edited model's
            outputs differ from the input model's by more than `atol` on `check_feeds`.
    """
    started = time.perf_counter()
    edited = edit.apply(model)
    check = latency_before = latency_after = None
    if check_feeds:
        check, latency_before, latency_after = check_edit(model, edited, edit, check_feeds, atol,
                                                          repeats=latency_repeats)
        if check.enforced and not check.passed:
            raise WorkbenchError(
                f"{edit.describe()} changed the model's outputs: max abs diff {check.max_abs_diff:.3e} > atol {atol:g} "
                f"(compared {[a for _, a in check.compared]}).",
                expected="an edit that preserves what the model computes",
                fix="inspect the edited graph; if the change is intended, raise atol for this step",
            )
    diff = GraphDiff(_op_counts(model), _op_counts(edited), _model_size_mb(model), _model_size_mb(edited),
                     latency_before, latency_after)
    return edited, EditReport(edit, diff, check, time.perf_counter() - started)


@dataclass(frozen=True)
class SurgeryResult:
    """The edited model on disk, the plan that made it, and one report per edit."""

    path: Path
    plan: Any
    reports: tuple[EditReport, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "plan": json.loads(self.plan.to_json()),
                "reports": [r.to_dict() for r in self.reports]}

    def _repr_html_(self) -> str:
        return f"<b>Surgery</b> -> <code>{self.path}</code>" + _reports_html(self.reports)


def _reports_html(reports: Any) -> str:
    rows = []
    for r in reports:
        changes = ", ".join(f"{op} {delta:+d}" for op, delta in r.diff.op_changes.items()) or "no op changes"
        if r.check is None:
            check = "not checked"
        else:
            check = f"{'ok' if r.check.passed else ('FAIL' if r.check.enforced else 'differs (allowed)')} " \
                    f"max abs {r.check.max_abs_diff:.2e}"
        latency = ("" if r.diff.latency_ms_before is None
                   else f"{r.diff.latency_ms_before:.2f} -> {r.diff.latency_ms_after:.2f} ms")
        rows.append(f"<tr><td><code>{r.edit.describe()}</code></td><td>{r.diff.nodes_before} -> {r.diff.nodes_after}"
                    f"</td><td>{changes}</td><td>{check}</td><td>{latency}</td></tr>")
    return ("<table><tr><th>edit</th><th>nodes</th><th>ops</th><th>check</th><th>latency</th></tr>"
            f"{''.join(rows)}</table>")


def run_surgery(model_path: str | os.PathLike[str], output_path: str | os.PathLike[str], plan: Any, *,
                check_feeds: list[dict[str, np.ndarray]] | None = None, atol: float = 1e-4,
                latency_repeats: int = 0) -> SurgeryResult:
    """Apply every edit of `plan` in order, checking each; write the result only if all of them succeed.

    Raises:
        WorkbenchError: An edit failed or broke the model; nothing is written.
    """
    from workbench.onnx_io import load_onnx, save_onnx

    model = load_onnx(model_path)
    feeds = check_feeds
    reports = []
    for edit in plan.edits:
        edited, report = apply_edit(model, edit, check_feeds=feeds, atol=atol, latency_repeats=latency_repeats)
        if feeds:
            feeds = [edit.adapt_feeds(f, model) for f in feeds]  # the next edit sees the edited interface
        model = edited
        reports.append(report)
    save_onnx(model, output_path)
    return SurgeryResult(Path(output_path), plan, tuple(reports))


# ----------------------------------------------------------------------------------------------------------
# The summary a CI job reads after a surgery run
# ----------------------------------------------------------------------------------------------------------

SURGERY_SUMMARY_VERSION = 1


def surgery_summary(result: SurgeryResult) -> dict[str, Any]:
    """What a surgery run did, as plain JSON-ready data (the contract a notebook's CI job reads).

    Keys:
        version: SURGERY_SUMMARY_VERSION.
        output: The edited model's path.
        plan: The plan's entries ({"kind": ..., **fields}), in order.
        edits: One entry per edit: kind, nodes_before, nodes_after, op_changes, max_abs_diff (None when not
            checked), passed (None when not checked), enforced, seconds.
        nodes_before, nodes_after: Nodes of the input model and of the edited model.
        op_counts_before, op_counts_after: op type -> nodes, for both.
        fused_ops: For each of FUSED_OP_TYPES, how many nodes of it the edited model holds.
        max_check_diff: The largest difference any edit's check measured; None when nothing was checked.
        all_checks_passed: Whether every checked edit stayed within atol (lossy edits are allowed to differ, so
            this can be False for a plan that ran); None when nothing was checked.
        size_mb_before, size_mb_after: Weights of the input and of the edited model.
        latency_ms_before, latency_ms_after: Median latency of the input model (first edit's check) and of the
            edited model (last edit's check) on the first check feed; None without check feeds or repeats.
        seconds: Time spent applying and checking the edits.

    For an empty plan the op counts are read from the output file (it is the input, copied).
    """
    reports = result.reports
    if reports:
        first, last = reports[0].diff, reports[-1].diff
        counts_before, counts_after = dict(first.op_counts_before), dict(last.op_counts_after)
        size_before, size_after = first.size_mb_before, last.size_mb_after
        latency_before, latency_after = first.latency_ms_before, last.latency_ms_after
    else:
        onnx = require("onnx", purpose="Reading an ONNX model")
        model = onnx.load(str(result.path), load_external_data=False)
        counts_before = counts_after = _op_counts(model)
        size_before = size_after = float(_model_size_mb(model))
        latency_before = latency_after = None
    checks = [r.check for r in reports if r.check is not None]
    return {
        "version": SURGERY_SUMMARY_VERSION,
        "output": str(result.path),
        "plan": [edit.to_plan_entry() for edit in result.plan.edits],
        "edits": [
            {"kind": r.edit.kind, "nodes_before": r.diff.nodes_before, "nodes_after": r.diff.nodes_after,
             "op_changes": r.diff.op_changes,
             "max_abs_diff": None if r.check is None else r.check.max_abs_diff,
             "passed": None if r.check is None else r.check.passed,
             "enforced": None if r.check is None else r.check.enforced,
             "seconds": r.seconds}
            for r in reports
        ],
        "nodes_before": sum(counts_before.values()),
        "nodes_after": sum(counts_after.values()),
        "op_counts_before": counts_before,
        "op_counts_after": counts_after,
        "fused_ops": {op: int(counts_after.get(op, 0)) for op in FUSED_OP_TYPES},
        "max_check_diff": max((c.max_abs_diff for c in checks), default=None),
        "all_checks_passed": all(c.passed for c in checks) if checks else None,
        "size_mb_before": float(size_before),
        "size_mb_after": float(size_after),
        "latency_ms_before": latency_before,
        "latency_ms_after": latency_after,
        "seconds": sum(r.seconds for r in reports),
    }


def write_surgery_summary(result: SurgeryResult, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Write `surgery_summary(result)` as JSON to `path` (complete or not at all) and return it."""
    from workbench._files import atomic_path

    summary = surgery_summary(result)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return summary
