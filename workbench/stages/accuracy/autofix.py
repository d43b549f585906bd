"""Automatic layer-precision fixes: keep the fewest nodes in higher precision that bring a candidate inside
an accuracy budget.

1. Convert with the plan as given and evaluate it; if it meets the budget, stop.
2. Before pinning whole nodes, try the cheap fix: activation smoothing (SmoothQuant), which keeps every node in
   INT8 and only adds an elementwise Mul per smoothed node (or none, where the scale folds into a LayerNorm).
   If the smoothed plan meets the budget, stop; if it is closer, search on from it. A plan that already smooths
   (NNCF's defaults do, at alpha 0.95) tries the other `smoothing_alphas` instead and keeps the closest.
3. Diagnose it layer by layer and rank its quantized nodes by the error they cause.
4. Pin the whole ranking to FP32 (the budget must be reachable at all), then bisect over the ranked prefix
   for the shortest one that meets the budget: about log2(N) trials for N quantized nodes.
5. Try to unpin each pin, least sensitive first; keep an unpin whenever the budget still holds.

Every trial re-converts from a PrecisionPlan and re-evaluates, and is recorded (pins, accuracy, latency). The
search spends at most 3 + ceil(log2(N)) + `max_prune_trials` evaluations, plus one per alpha tried.

It works for every engine a PrecisionPlan converts for: trials are that engine's files (an OpenVINO IR for
int8_nncf), timed with that engine's runner, compared through the engine registry, and diagnosed through the
engine's view (`diagnose.CANDIDATE_VIEWS`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from workbench.config import StageConfig, check_choice, check_positive
from workbench.engines.base import FLOAT_PRECISIONS, Candidate
from workbench.errors import AccuracyError, ConfigError
from workbench.progress import Progress, ProgressCallback


@dataclass(frozen=True)
class AutofixConfig(StageConfig):
    """Search settings.

    Attributes:
        try_smoothing: Try SmoothQuant before pinning nodes (needs calibration feeds).
        smoothing_alpha: The smoothing strength tried on a plan that does not smooth.
        smoothing_alphas: The strengths tried, in order, on a plan that already smooths (its own alpha is
            skipped); the closest to the budget is kept. On MiniLM with NNCF, 0.75 cut the worst sentence's
            error by half against NNCF's default 0.95.
        max_prune_trials: Trials spent trying to drop pins once the budget holds.
        latency_iterations: Timed runs per trial (batch 1), for the latency-vs-accuracy chart.
        threads: onnxruntime threads for the trials' latency; None: all cores.
        float_precision: What the trials' floating-point ops run in (a Candidate's float_precision): "fp32", or
            "bf16" for an OpenVINO plan that will ship with bf16 float ops, so the pins are judged as served.
    """

    try_smoothing: bool = True
    smoothing_alpha: float = 0.75
    smoothing_alphas: tuple[float, ...] = (0.75, 0.85)
    max_prune_trials: int = 8
    latency_iterations: int = 20
    threads: int | None = None
    float_precision: str = "fp32"

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {},
        "quick": {"max_prune_trials": 2, "latency_iterations": 5},
    }

    def __post_init__(self) -> None:
        check_positive(self, "latency_iterations")
        check_choice(self, "float_precision", FLOAT_PRECISIONS)
        if self.max_prune_trials < 0:
            raise ConfigError("AutofixConfig.max_prune_trials must be >= 0.")
        object.__setattr__(self, "smoothing_alphas", tuple(float(a) for a in self.smoothing_alphas))
        for alpha in (self.smoothing_alpha, *self.smoothing_alphas):
            if not 0.0 <= alpha <= 1.0:
                raise ConfigError(f"AutofixConfig smoothing alphas must be in [0, 1], got {alpha}.")


@dataclass(frozen=True)
class Trial:
    """One evaluated candidate of the search."""

    index: int
    stage: str  # "start", "smooth", "alpha", "all pinned", "bisect", "prune"
    pins: tuple[str, ...]
    cosine_mean: float
    cosine_min: float
    meets_budget: bool
    latency_ms: float
    path: Path
    pinned_parameters: int = 0  # weights the pins keep in FP32: a noise-free proxy for what the pins cost
    smoothed: bool = False
    shortfall: float = 0.0  # how far it misses the budget's gates, summed (0 when it meets them)
    metrics: Mapping[str, float] = field(default_factory=dict)  # the task's metrics of this trial
    smoothing_alpha: float | None = None

    def to_dict(self) -> dict[str, Any]:
        values = dict(self.__dict__)
        values["path"] = str(self.path)
        values["pins"] = list(self.pins)
        values["metrics"] = dict(self.metrics)
        return values


@dataclass(frozen=True)
class AutofixResult:
    """The fixed model, its plan, the ranking it came from, and every trial."""

    path: Path
    plan: Any
    trials: tuple[Trial, ...]
    ranking: tuple[tuple[str, float], ...]
    diagnosis: Any
    budget: Any
    seconds: float
    notes: tuple[str, ...] = field(default_factory=tuple)
    primary: str = "embedding_cosine_mean"  # the task metric the trials' cosine_mean is

    @property
    def best(self) -> Trial:
        """The trial that meets the budget with the fewest weights kept in FP32 (then the lowest latency).

        Pinned weights, not the trials' own timings, decide: single-process timings on a shared machine vary
        by more than the pins change them, while the FP32 work a pin adds is proportional to its weights.
        """
        passing = [t for t in self.trials if t.meets_budget]
        return min(passing, key=lambda t: (t.pinned_parameters, t.latency_ms))

    @property
    def start(self) -> Trial:
        return self.trials[0]

    def pareto_front(self) -> list[Trial]:
        """Trials no other trial beats on both latency and mean cosine."""
        front: list[Trial] = []
        for trial in sorted(self.trials, key=lambda t: (t.latency_ms, -t.cosine_mean)):
            if not front or trial.cosine_mean > front[-1].cosine_mean:
                front.append(trial)
        return front

    def figure(self) -> Any:
        """Latency vs accuracy of every trial, with the Pareto front and the budget (plotly)."""
        import plotly.graph_objects as go

        figure = go.Figure()
        for meets, colour in ((True, "seagreen"), (False, "indianred")):
            trials = [t for t in self.trials if t.meets_budget == meets]
            figure.add_scatter(
                x=[t.latency_ms for t in trials],
                y=[t.cosine_mean for t in trials],
                mode="markers",
                marker={"color": colour, "size": 10},
                name="meets budget" if meets else "misses budget",
                text=[f"trial {t.index} ({t.stage}): {len(t.pins)} pins, min {t.cosine_min:.4f}" for t in trials],
            )
        front = self.pareto_front()
        figure.add_scatter(
            x=[t.latency_ms for t in front],
            y=[t.cosine_mean for t in front],
            mode="lines",
            line={"dash": "dot", "color": "gray"},
            name="Pareto front",
        )
        primary = self.primary
        for gate in self.budget.gates():
            if gate.metric == primary:
                figure.add_hline(y=gate.limit, line_dash="dash", annotation_text="budget (mean)")
        figure.update_layout(
            title="Autofix trials",
            xaxis_title="latency, batch 1 (ms)",
            yaxis_title=primary.replace("_", " ") or "mean cosine",
        )
        return figure

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "plan": self.plan.to_dict(),
            "trials": [t.to_dict() for t in self.trials],
            "ranking": [list(r) for r in self.ranking],
            "budget": self.budget.to_dict(),
            "seconds": self.seconds,
            "notes": list(self.notes),
            "diagnosis_seconds": self.diagnosis.seconds if self.diagnosis else None,
        }

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{t.index}</td><td>{t.stage}</td><td>{len(t.pins)}</td><td>{t.cosine_mean:.5f}</td>"
            f"<td>{t.cosine_min:.5f}</td><td>{'yes' if t.meets_budget else 'no'}</td><td>{t.latency_ms:.2f}</td></tr>"
            for t in self.trials
        )
        best = self.best
        return (
            f"<b>Autofix</b>: {len(best.pins)} node(s) kept in FP32 -> mean {best.cosine_mean:.5f}, min "
            f"{best.cosine_min:.5f} at {best.latency_ms:.2f} ms (start: {self.start.cosine_mean:.5f} / "
            f"{self.start.cosine_min:.5f} at {self.start.latency_ms:.2f} ms), {len(self.trials)} trials, "
            f"<code>{self.path}</code><table><tr><th>#</th><th>stage</th><th>pins</th><th>cos mean</th>"
            f"<th>cos min</th><th>meets</th><th>ms</th></tr>{rows}</table>"
        )


def trial_budget(quantized_count: int, max_prune_trials: int, alpha_trials: int = 0) -> int:
    """The most evaluations the search can spend for N quantized nodes (and `alpha_trials` alphas tried)."""
    return 3 + math.ceil(math.log2(max(quantized_count, 1))) + max_prune_trials + alpha_trials


def autofix(
    model_path: str | os.PathLike[str],
    plan: Any,
    evaluation_feeds: Sequence[Mapping[str, np.ndarray]] | Any,
    output_dir: str | os.PathLike[str],
    *,
    budget: Any = None,
    task: Any = None,
    reference: str | os.PathLike[str] | None = None,
    calibration_feeds: Any = None,
    config: AutofixConfig = AutofixConfig(),
    cache_dir: str | os.PathLike[str] | None = None,
    progress: ProgressCallback | None = None,
) -> AutofixResult:
    """Find a small set of nodes to keep in FP32 so that `plan`'s conversion of `model_path` meets `budget`.

    Args:
        model_path: The FP32 model the plan converts (node names are this model's).
        plan: The starting PrecisionPlan (e.g. PrecisionPlan.preset("cpu_int8_static")).
        evaluation_feeds: Held-out feed dicts, shaped as served (padded to a fixed length), or the task's
            Encoded batches.
        output_dir: Where the trials' models and the fixed model are written.
        budget: The task's Budget to meet (default: the task's default budget).
        task: The task (workbench.tasks), or None: found from the reference's outputs.
        reference: The FP32 model accuracy is measured against; default `model_path`.
        calibration_feeds: For static INT8 and FP16's overflow scan.
        config: Search settings.
        cache_dir: Calibration cache.
        progress: Called with a ProgressEvent (unit "fix trials", `item` the Trial) as each trial completes, and
            before each one starts; it may raise workbench.progress.Stopped to end the search there (trials are
            whole files; the fixed model and its plan are written only at the end).

    Raises:
        AccuracyError: Even with every quantized node in FP32 the budget does not hold.
    """
    from workbench.engines.base import check_float_precision, get_engine
    from workbench.stages.accuracy.compare import compare_candidates, task_and_budget
    from workbench.stages.accuracy.diagnose import diagnose
    from workbench.tasks.base import Encoded

    check_float_precision(get_engine(plan.engine), config.float_precision)  # before any folder or trial is made
    reference = Path(reference or model_path)
    encoded = evaluation_feeds if isinstance(evaluation_feeds, Encoded) else None
    evaluation_feeds = encoded.feeds if encoded is not None else list(evaluation_feeds)
    resolved, budget = task_and_budget(reference, task, budget)
    task_name = resolved.name
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    engine = get_engine(plan.engine)
    suffix = engine.suffixes[0]
    started = time.perf_counter()
    trials: list[Trial] = []
    evaluated: dict[Any, Trial] = {}
    plans: dict[int, Any] = {}  # trial index -> the plan (smoothing included) it was converted with
    weight_sizes = _weight_sizes(model_path)
    latency_feed = dict(evaluation_feeds[0])
    if len(next(iter(latency_feed.values()))) > 1:  # time batch 1, the online-serving case
        latency_feed = {k: v[:1] for k, v in latency_feed.items()}

    report = Progress(progress, "auto-fix", "fix trials")

    def evaluate(pins: Sequence[str], stage: str) -> Trial:
        key = (frozenset(pins), plan.smoothing)
        if key in evaluated:
            return evaluated[key]
        index = len(trials)
        report(index, f"trial {index} ({stage}): converting with {len(pins)} node(s) in FP32")
        converted = plan.pin([p for p in pins if p not in plan.nodes], reason="sensitivity")  # user pins stay
        result = converted.convert(
            model_path,
            output_dir / f"trial_{index:02d}{suffix}",
            calibration_feeds=calibration_feeds,
            cache_dir=cache_dir,
            progress=False,
        )
        trial_candidate = Candidate("trial", result.path, engine=engine.name, float_precision=config.float_precision)
        accuracy = compare_candidates(
            reference,
            {"trial": trial_candidate},
            encoded or evaluation_feeds,
            task=task_name,
            budget=budget,
            threads=config.threads,
        )["trial"]
        with trial_candidate.runner(threads=config.threads) as runner:
            for _ in range(3):
                runner.infer(latency_feed)
            timings = []
            for _ in range(config.latency_iterations):
                tick = time.perf_counter()
                runner.infer(latency_feed)
                timings.append((time.perf_counter() - tick) * 1000.0)
        trial = Trial(
            index,
            stage,
            tuple(pins),
            _number(accuracy.cosine_mean),
            _number(accuracy.cosine_min),
            bool(accuracy),
            float(np.median(timings)),
            result.path,
            sum(weight_sizes.get(p, 0) for p in pins),
            plan.smoothing is not None,
            _shortfall(accuracy.task_metrics, budget),
            dict(accuracy.task_metrics),
            plan.smoothing.alpha if plan.smoothing is not None else None,
        )
        trials.append(trial)
        evaluated[key] = trial
        plans[index] = plan
        verdict = "meets" if trial.meets_budget else "misses"
        report(len(trials), f"trial {index} ({stage}): {len(pins)} pin(s), {verdict} the budget", item=trial)
        return trial

    start = evaluate((), "start")
    notes: list[str] = []
    diagnosis = None
    ranking: list[tuple[str, float]] = []
    current = start
    if not start.meets_budget and config.try_smoothing and plan.smoothing is None and calibration_feeds:
        from dataclasses import replace

        from workbench.stages.precision.smooth import SmoothingConfig

        unsmoothed = plan
        plan = replace(plan, smoothing=SmoothingConfig(alpha=config.smoothing_alpha))
        smoothed = evaluate((), "smooth")
        if smoothed.shortfall < start.shortfall:
            current = smoothed
            notes.append(
                f"SmoothQuant (alpha {config.smoothing_alpha}) took the candidate from mean "
                f"{start.cosine_mean:.5f} / min {start.cosine_min:.5f} to {smoothed.cosine_mean:.5f} / "
                f"{smoothed.cosine_min:.5f}"
            )
        else:
            plan = unsmoothed
            notes.append("SmoothQuant did not bring the candidate closer to the budget; searching without it")
    elif not start.meets_budget and config.try_smoothing and plan.smoothing is not None:
        from dataclasses import replace

        own, kept = plan.smoothing, plan
        for alpha in [a for a in config.smoothing_alphas if a != own.alpha]:
            plan = replace(kept, smoothing=replace(own, alpha=alpha, op_alphas=()))
            trial = evaluate((), "alpha")
            if trial.shortfall < current.shortfall:
                kept, current = plan, trial
            if current.meets_budget:
                break
        plan = kept
        if current is not start:
            notes.append(
                f"SmoothQuant alpha {plan.smoothing.alpha} (instead of {own.alpha}) took the candidate from "
                f"mean {start.cosine_mean:.5f} / min {start.cosine_min:.5f} to {current.cosine_mean:.5f} / "
                f"{current.cosine_min:.5f}"
            )
        else:
            notes.append(
                f"no alpha among {list(config.smoothing_alphas)} brought the candidate closer than alpha {own.alpha}"
            )
    if current.meets_budget:
        if current is start:
            notes.append("the starting candidate already meets the budget: nothing to pin")
    else:
        report(len(trials), "diagnosing layer by layer which nodes lose the accuracy")
        diagnosis = diagnose(model_path, current.path, evaluation_feeds, task=task_name)
        ranking = diagnosis.sensitivity()
        order = [name for name, _ in ranking]
        report(
            len(trials),
            f"ranked {len(order)} quantized nodes",
            total=len(trials) + 1 + math.ceil(math.log2(max(len(order), 1))) + config.max_prune_trials,
        )
        everything = evaluate(order, "all pinned")
        if not everything.meets_budget:
            raise AccuracyError(
                f"Even with all {len(order)} quantized nodes in FP32 the candidate misses the budget "
                f"(mean {everything.cosine_mean:.5f}, min {everything.cosine_min:.5f}; "
                f"{'; '.join(budget.failures(everything.metrics))}).",
                expected=budget.describe(),
                fix="check the reference and the evaluation data, or relax the budget",
            )
        search_pins(
            order, lambda pins, stage: evaluate(pins, stage).meets_budget, max_prune_trials=config.max_prune_trials
        )
    passing = [t for t in trials if t.meets_budget]
    best = min(passing, key=lambda t: (t.pinned_parameters, t.latency_ms))
    plan = plans[best.index]
    final_plan = plan.pin([p for p in best.pins if p not in plan.nodes], reason="sensitivity", note="autofix")
    fixed_path = engine.copy_model(best.path, output_dir / f"fixed{suffix}")
    final_plan.save(output_dir / "fixed_plan.json")
    return AutofixResult(
        fixed_path,
        final_plan,
        tuple(trials),
        tuple(ranking),
        diagnosis,
        budget,
        time.perf_counter() - started,
        tuple(notes),
        resolved.primary_cosine[0],
    )


def moved(result: AutofixResult, old: str | os.PathLike[str], new: str | os.PathLike[str]) -> AutofixResult:
    """`result` with every path under folder `old` pointing under `new` (its folder was moved there)."""
    from dataclasses import replace

    def move(path: Path) -> Path:
        path = Path(path)
        return Path(new) / path.relative_to(old) if path.is_relative_to(old) else path

    return replace(result, path=move(result.path), trials=tuple(replace(t, path=move(t.path)) for t in result.trials))


def search_pins(order: Sequence[str], meets: Callable[[list[str], str], bool], *, max_prune_trials: int) -> list[str]:
    """The search of steps 4 and 5 for any budget: the shortest prefix of `order` (most sensitive first) whose
    pins meet it, by bisection, then pins dropped least sensitive first while it still holds.

    The whole of `order` must already be known to meet the budget. `meets(pins, stage)` converts and evaluates
    one trial ("bisect" or "prune"); the callers cache trials, so asking twice costs nothing. At most
    ceil(log2(len(order))) bisection steps and `max_prune_trials` pruning steps are asked for.

    Returns:
        The pins found.
    """
    low, high = 0, len(order)  # the prefix of `low` nodes misses, the prefix of `high` meets
    while high - low > 1:
        middle = (low + high) // 2
        if meets(list(order[:middle]), "bisect"):
            high = middle
        else:
            low = middle
    pins = list(order[:high])
    for tried, name in enumerate(reversed(order[:high])):  # least sensitive first
        if tried >= max_prune_trials or len(pins) <= 1:
            break
        fewer = [p for p in pins if p != name]
        if meets(fewer, "prune"):
            pins = fewer
    return pins


def _weight_sizes(model_path: str | os.PathLike[str]) -> dict[str, int]:
    """Node name -> number of weight elements (initializers) it reads."""
    from workbench.onnx.io import load_onnx

    model = load_onnx(model_path)
    sizes = {t.name: int(np.prod(t.dims, dtype=np.int64)) for t in model.graph.initializer}
    return {n.name: sum(sizes.get(i, 0) for i in n.input) for n in model.graph.node}


def _number(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _shortfall(metrics: Mapping[str, float], budget: Any) -> float:
    """How far `metrics` miss the budget's gates, summed (a metric not measured counts as far as can be)."""
    total = 0.0
    for gate in budget.gates():
        value = metrics.get(gate.metric)
        if value is None or not math.isfinite(value):
            total += 1.0
        elif gate.op == ">=":
            total += max(0.0, gate.limit - value)
        else:
            total += max(0.0, value - gate.limit) / max(abs(gate.limit), 1e-12)
    return total
