"""Accuracy of decoder candidates against the FP32 decoder, on the generation budget, and the fixes.

- :class:`GenerationEvaluator` / :func:`evaluate_generation`: teacher-forced next-token agreement, perplexity
  ratio and logits cosine on the evaluation text (the text-generation task's metrics), and greedy-continuation
  agreement on prompts (the loop run with both models: the share of tokens before the first divergence).
- :func:`diagnose_decoder`: the layer-by-layer diagnosis of workbench.stages.accuracy.diagnose on decoder feeds,
  which ranks the quantized MatMuls by the error each causes on its own.
- :func:`autofix_decoder`: the autofix search (workbench.stages.accuracy.autofix.search_pins) on the generation
  budget: pin the fewest MatMuls to FP32 that bring a weight-only (or dynamic INT8) candidate inside it.

Candidates and the reference are model files run by their engines' runners (any engine: ONNX Runtime,
OpenVINO); a candidate is evaluated as a server runs it, one text per batch by default.
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workbench.decoding import DecoderSpec
from workbench.engines.base import Candidate, Runner, engine_for_path
from workbench.errors import AccuracyError, DataError
from workbench.tasks.generation import (
    GenerationBudget,
    TeacherForcedStats,
    TextGeneration,
)

#: Logits kept in memory for the reference (more are recomputed per candidate instead).
_REFERENCE_CACHE_BYTES = 256 * 1024 * 1024

ModelLike = Candidate | str | os.PathLike[str]


def _runner(model: ModelLike, name: str, threads: int | None) -> Runner:
    if isinstance(model, Candidate):
        return model.runner(threads=threads)
    return engine_for_path(model).runner(Path(model), name=name, threads=threads)


def _path(model: ModelLike) -> Path:
    return model.path if isinstance(model, Candidate) else Path(model)


@dataclass(frozen=True)
class GenerationAccuracy:
    """One candidate's generation metrics against the reference, and its verdict on the budget.

    Attributes:
        name: The candidate.
        values: next_token_agreement, perplexity_ratio, logits_cosine_mean, logits_cosine_min,
            reference_perplexity, candidate_perplexity, positions; with prompts also greedy_agreement (mean share
            of a continuation before its first divergence) and greedy_prefix_tokens_mean.
        failures: The budget's gates it misses, in words (empty: it meets the budget).
        greedy_prefixes: Per prompt, the number of tokens the continuations share before they differ.
        seconds: How long the evaluation took.
    """

    name: str
    values: Mapping[str, float]
    failures: tuple[str, ...]
    greedy_prefixes: tuple[int, ...] = ()
    seconds: float = 0.0

    def __bool__(self) -> bool:
        return not self.failures

    @property
    def meets_budget(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "values": dict(self.values),
            "meets_budget": self.meets_budget,
            "failures": list(self.failures),
            "greedy_prefixes": list(self.greedy_prefixes),
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class GenerationAccuracyReport(Mapping[str, GenerationAccuracy]):
    """Every candidate's GenerationAccuracy, the budget, and what they were measured on."""

    results: Mapping[str, GenerationAccuracy]
    budget: GenerationBudget
    settings: Mapping[str, Any]

    def __getitem__(self, name: str) -> GenerationAccuracy:
        return self.results[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget.to_dict(),
            "settings": dict(self.settings),
            "candidates": {name: result.to_dict() for name, result in self.results.items()},
        }

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(r.name)}</td><td>{r.values['next_token_agreement']:.4f}</td>"
            f"<td>{r.values['perplexity_ratio']:.4f}</td><td>{r.values['logits_cosine_mean']:.5f}</td>"
            f"<td>{r.values.get('greedy_agreement', float('nan')):.3f}</td>"
            f"<td>{'meets' if r else html.escape('; '.join(r.failures))}</td></tr>"
            for r in self.results.values()
        )
        return (
            f"<b>Generation accuracy</b> vs FP32 on {self.settings.get('texts')} texts and "
            f"{self.settings.get('prompts')} prompts; budget: {html.escape(self.budget.describe())}"
            "<table><tr><th>candidate</th><th>next-token agreement</th><th>perplexity ratio</th>"
            f"<th>logits cosine</th><th>greedy agreement</th><th>budget</th></tr>{rows}</table>"
        )


class GenerationEvaluator:
    """Measures candidates against one reference decoder on fixed evaluation texts and prompts.

    The reference's greedy continuations are computed once; its logits are kept when they fit in 256 MB and
    recomputed batch by batch otherwise, so memory holds one batch of logits per model.

    Args:
        reference: The FP32 decoder (a model file or a Candidate).
        tokenizer: The model's tokenizer.
        spec: The decoder spec; default: the one in the reference's metadata.
        texts: Evaluation texts (teacher-forced metrics); default: data/evaluation.txt.
        prompts: Prompts for greedy-continuation agreement; default: data/prompts.txt; () skips that metric.
        budget: The budget verdicts are given on; default GenerationBudget().
        sequence_length: The most tokens per evaluation text.
        batch_size: Texts per forward pass (1: as a server runs one request).
        greedy_tokens: Tokens of each greedy continuation (0 skips the metric).
        threads: Intra-op threads for every runner.
    """

    def __init__(
        self,
        reference: ModelLike,
        tokenizer: Any,
        *,
        spec: DecoderSpec | None = None,
        texts: Sequence[str] | None = None,
        prompts: Sequence[str] | None = None,
        budget: GenerationBudget | None = None,
        sequence_length: int = 64,
        batch_size: int = 1,
        greedy_tokens: int = 16,
        threads: int | None = None,
    ) -> None:
        from workbench.onnx.decoder import read_decoder_spec
        from workbench.stages.generation.generate import check_prompts, encode_prompts
        from workbench.tasks.generation import load_prompts

        self.task = TextGeneration()
        self.budget = budget if budget is not None else GenerationBudget()
        self.task.check_budget(self.budget)
        self.reference = reference
        self.spec = spec or read_decoder_spec(_path(reference))
        self.threads = threads
        self.greedy_tokens = int(greedy_tokens)
        if self.greedy_tokens < 0:
            raise DataError(f"greedy_tokens must be >= 0, got {greedy_tokens}.")
        texts = list(texts) if texts is not None else list(self.task.load_samples(None).evaluation)
        prompts = list(prompts) if prompts is not None else list(load_prompts())
        if not texts:
            raise DataError("No evaluation texts.", fix="pass texts= (or None for data/evaluation.txt)")
        if self.greedy_tokens and prompts:
            self.prompt_ids = encode_prompts(tokenizer, prompts)
            check_prompts(self.spec, self.prompt_ids)
        else:
            self.prompt_ids = []
        self.encoded = self.task.encode(
            tokenizer, texts, batch_size=batch_size, sequence_length=sequence_length, spec=self.spec
        )
        self.settings = {
            "texts": len(texts),
            "prompts": len(self.prompt_ids),
            "sequence_length": sequence_length,
            "batch_size": batch_size,
            "greedy_tokens": self.greedy_tokens,
        }
        self._reference_logits: list[np.ndarray] | None = None
        self._reference_greedy: list[tuple[int, ...]] = []
        self._prepare()

    def _prepare(self) -> None:
        with _runner(self.reference, "reference", self.threads) as runner:
            self._reference_greedy = self._greedy(runner)
            size = sum(f["input_ids"].size for f in self.encoded.feeds) * self.spec.vocab_size * 4
            if size <= _REFERENCE_CACHE_BYTES:
                self._reference_logits = [runner.infer(f)["logits"] for f in self.encoded.feeds]

    def _greedy(self, runner: Runner) -> list[tuple[int, ...]]:
        from workbench.stages.generation.generate import (
            GenerationConfig,
            generate_tokens,
        )

        if not self.prompt_ids:
            return []
        config = GenerationConfig(max_new_tokens=self.greedy_tokens, stop_token_ids=())
        return [generate_tokens(runner, self.spec, [p], config).tokens[0] for p in self.prompt_ids]

    def evaluate(self, candidate: ModelLike, name: str = "candidate") -> GenerationAccuracy:
        """The candidate's metrics and its verdict on the budget."""
        started = time.perf_counter()
        stats = TeacherForcedStats()
        with ExitStack() as stack:
            runner = stack.enter_context(_runner(candidate, name, self.threads))
            reference = (
                None
                if self._reference_logits is not None
                else stack.enter_context(_runner(self.reference, "reference", self.threads))
            )
            for index, feeds in enumerate(self.encoded.feeds):
                if self._reference_logits is not None:
                    expected = self._reference_logits[index]
                else:
                    assert reference is not None
                    expected = reference.infer(feeds)["logits"]
                stats.add(expected, runner.infer(feeds)["logits"], feeds["input_ids"], feeds["attention_mask"])
            greedy = self._greedy(runner)
        values = stats.values()
        prefixes = tuple(_shared_prefix(a, b) for a, b in zip(self._reference_greedy, greedy))
        if prefixes:
            values["greedy_agreement"] = float(np.mean([p / self.greedy_tokens for p in prefixes]))
            values["greedy_prefix_tokens_mean"] = float(np.mean(prefixes))
        return GenerationAccuracy(
            name=name,
            values=values,
            failures=self.budget.failures(values),
            greedy_prefixes=prefixes,
            seconds=time.perf_counter() - started,
        )


def _shared_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    count = 0
    for x, y in zip(a, b):
        if x != y:
            break
        count += 1
    return count


def evaluate_generation(
    reference: ModelLike,
    candidates: Mapping[str, ModelLike],
    tokenizer: Any,
    *,
    budget: GenerationBudget | None = None,
    **settings: Any,
) -> GenerationAccuracyReport:
    """Every candidate's generation metrics against `reference`, and its verdict on `budget`.

    Args:
        reference: The FP32 decoder.
        candidates: Name -> model file or Candidate.
        tokenizer: The model's tokenizer.
        budget: Default GenerationBudget().
        **settings: GenerationEvaluator's keyword arguments (spec, texts, prompts, sequence_length,
            batch_size, greedy_tokens, threads).
    """
    evaluator = GenerationEvaluator(reference, tokenizer, budget=budget, **settings)
    results = {name: evaluator.evaluate(model, name) for name, model in candidates.items()}
    return GenerationAccuracyReport(results=results, budget=evaluator.budget, settings=evaluator.settings)


# ---------------------------------------------------------------------------------------------------------------
# diagnosis and the auto-fix


def diagnose_decoder(
    reference: str | os.PathLike[str],
    candidate: str | os.PathLike[str],
    tokenizer: Any,
    *,
    texts: Sequence[str] | None = None,
    spec: DecoderSpec | None = None,
    batches: int = 8,
    sequence_length: int = 48,
) -> Any:
    """Layer-by-layer diagnosis of a decoder candidate (workbench.stages.accuracy.diagnose) on prompt-step feeds
    of the evaluation text; its `sensitivity()` ranks the quantized nodes by the output error each causes
    alone.

    Args:
        reference: The FP32 decoder the candidate was converted from (same fused graph: names must match).
        candidate: The converted decoder.
        tokenizer: The model's tokenizer.
        texts: Evaluation texts; default: data/evaluation.txt.
        spec: Default: the reference's.
        batches: How many texts (one per feed) the diagnosis runs on.
        sequence_length: The most tokens per text.
    """
    from workbench.onnx.decoder import read_decoder_spec
    from workbench.stages.accuracy.diagnose import diagnose

    task = TextGeneration()
    spec = spec or read_decoder_spec(reference)
    texts = list(texts) if texts is not None else list(task.load_samples(None).evaluation)
    encoded = task.encode(tokenizer, texts[:batches], batch_size=1, sequence_length=sequence_length, spec=spec)
    return diagnose(reference, candidate, encoded.feeds)


@dataclass(frozen=True)
class DecoderTrial:
    """One evaluated candidate of the decoder auto-fix."""

    index: int
    stage: str  # "start", "all pinned", "bisect", "prune"
    pins: tuple[str, ...]
    values: Mapping[str, float]
    meets_budget: bool
    failures: tuple[str, ...]
    path: Path
    pinned_parameters: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "stage": self.stage,
            "pins": list(self.pins),
            "values": dict(self.values),
            "meets_budget": self.meets_budget,
            "failures": list(self.failures),
            "path": str(self.path),
            "pinned_parameters": self.pinned_parameters,
        }


@dataclass(frozen=True)
class DecoderAutofixResult:
    """The fixed decoder, its plan, the ranking the search used, and every trial."""

    path: Path
    plan: Any
    trials: tuple[DecoderTrial, ...]
    ranking: tuple[tuple[str, float], ...]
    budget: GenerationBudget
    seconds: float
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def start(self) -> DecoderTrial:
        return self.trials[0]

    @property
    def best(self) -> DecoderTrial:
        """The passing trial with the fewest weights kept in FP32."""
        return min((t for t in self.trials if t.meets_budget), key=lambda t: (t.pinned_parameters, t.index))

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "plan": self.plan.to_dict(),
            "budget": self.budget.to_dict(),
            "trials": [t.to_dict() for t in self.trials],
            "ranking": [list(r) for r in self.ranking],
            "seconds": self.seconds,
            "notes": list(self.notes),
        }

    def _repr_html_(self) -> str:
        best = self.best
        rows = "".join(
            f"<tr><td>{t.index}</td><td>{t.stage}</td><td>{len(t.pins)}</td>"
            f"<td>{t.values['next_token_agreement']:.4f}</td><td>{t.values['perplexity_ratio']:.4f}</td>"
            f"<td>{'yes' if t.meets_budget else 'no'}</td></tr>"
            for t in self.trials
        )
        return (
            f"<b>Decoder autofix</b>: {len(best.pins)} MatMul(s) kept in FP32 -> next-token agreement "
            f"{best.values['next_token_agreement']:.4f}, perplexity ratio {best.values['perplexity_ratio']:.4f} "
            f"(start {self.start.values['next_token_agreement']:.4f} / "
            f"{self.start.values['perplexity_ratio']:.4f}), {len(self.trials)} trials, <code>{self.path}</code>"
            "<table><tr><th>#</th><th>stage</th><th>pins</th><th>agreement</th><th>ppl ratio</th><th>meets</th>"
            f"</tr>{rows}</table>"
        )


def autofix_decoder(
    model_path: str | os.PathLike[str],
    plan: Any,
    output_dir: str | os.PathLike[str],
    tokenizer: Any,
    *,
    budget: GenerationBudget | None = None,
    reference: str | os.PathLike[str] | None = None,
    texts: Sequence[str] | None = None,
    prompts: Sequence[str] | None = None,
    max_prune_trials: int = 4,
    diagnosis_batches: int = 6,
    progress: Callable[[DecoderTrial], None] | None = None,
    **settings: Any,
) -> DecoderAutofixResult:
    """Keep the fewest MatMuls in FP32 so that `plan`'s conversion of a decoder meets a generation budget.

    1. Convert with the plan and evaluate; if it meets the budget, stop.
    2. Diagnose it (diagnose_decoder) and rank its quantized nodes by the error each causes alone.
    3. Pin the whole ranking (the budget must be reachable at all), then the search of the embedding autofix
       (search_pins): bisect the ranked prefix, then drop pins least sensitive first.

    Every trial re-converts from a PrecisionPlan and is evaluated on the same texts and prompts. The best trial
    (fewest FP32 weights among those that pass) is written to `output_dir/fixed.onnx` with its plan in
    `fixed_plan.json`.

    Args:
        model_path: The FP32 decoder the plan converts (its node names are the pins').
        plan: The starting PrecisionPlan (e.g. PrecisionPlan.preset("cpu_int4_weight_only")).
        output_dir: Where the trials and the fixed model go.
        tokenizer: The model's tokenizer.
        budget: Default GenerationBudget().
        reference: The FP32 model accuracy is measured against; default `model_path`.
        texts, prompts: Evaluation texts and prompts (defaults: data/evaluation.txt, data/prompts.txt). Prompts
            are used only when the budget gates greedy_agreement.
        max_prune_trials: Trials spent dropping pins once the budget holds.
        diagnosis_batches: Texts the diagnosis runs on.
        progress: Called with each trial as it completes.
        **settings: GenerationEvaluator's other keyword arguments (sequence_length, batch_size, greedy_tokens,
            threads).

    Raises:
        AccuracyError: Even with every quantized node in FP32 the budget does not hold.
    """
    from workbench.onnx.io import load_onnx, save_onnx
    from workbench.stages.accuracy.autofix import _weight_sizes, search_pins

    started = time.perf_counter()
    budget = budget if budget is not None else GenerationBudget()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    reference = Path(reference or model_path)
    gates_greedy = any(g.metric == "greedy_agreement" for g in budget.gates())
    evaluator = GenerationEvaluator(
        reference, tokenizer, texts=texts, prompts=prompts if gates_greedy else (), budget=budget, **settings
    )
    sizes = _weight_sizes(model_path)
    trials: list[DecoderTrial] = []
    evaluated: dict[frozenset[str], DecoderTrial] = {}

    def evaluate(pins: Sequence[str], stage: str) -> DecoderTrial:
        key = frozenset(pins)
        if key in evaluated:
            return evaluated[key]
        index = len(trials)
        converted = plan.pin([p for p in pins if p not in plan.nodes], reason="sensitivity")
        result = converted.convert(model_path, output_dir / f"trial_{index:02d}.onnx", progress=False)
        accuracy = evaluator.evaluate(result.path, f"trial_{index:02d}")
        trial = DecoderTrial(
            index,
            stage,
            tuple(pins),
            dict(accuracy.values),
            accuracy.meets_budget,
            accuracy.failures,
            result.path,
            sum(sizes.get(p, 0) for p in pins),
        )
        trials.append(trial)
        evaluated[key] = trial
        if progress:
            progress(trial)
        return trial

    start = evaluate((), "start")
    notes: list[str] = []
    ranking: list[tuple[str, float]] = []
    if start.meets_budget:
        notes.append("the starting candidate already meets the budget: nothing to pin")
    else:
        diagnosis = diagnose_decoder(
            reference, start.path, tokenizer, texts=texts, spec=evaluator.spec, batches=diagnosis_batches
        )
        ranking = [(name, float(score)) for name, score in diagnosis.sensitivity()]
        order = [name for name, _ in ranking]
        everything = evaluate(order, "all pinned")
        if not everything.meets_budget:
            raise AccuracyError(
                f"Even with all {len(order)} quantized nodes in FP32 the decoder misses the budget: "
                f"{'; '.join(everything.failures)}.",
                expected=budget.describe(),
                fix="check the reference and the evaluation texts, or relax the budget",
            )
        search_pins(order, lambda pins, stage: evaluate(pins, stage).meets_budget, max_prune_trials=max_prune_trials)
    best = min((t for t in trials if t.meets_budget), key=lambda t: (t.pinned_parameters, t.index))
    final_plan = plan.pin([p for p in best.pins if p not in plan.nodes], reason="sensitivity", note="autofix")
    fixed = output_dir / "fixed.onnx"
    save_onnx(load_onnx(best.path), fixed)
    final_plan.save(output_dir / "fixed_plan.json")
    if best is not start:
        notes.append(f"{len(best.pins)} of {len(ranking)} quantized MatMuls kept in FP32: {', '.join(best.pins)}")
    return DecoderAutofixResult(
        fixed, final_plan, tuple(trials), tuple(ranking), budget, time.perf_counter() - started, tuple(notes)
    )
