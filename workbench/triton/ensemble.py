"""Text in, task outputs out: the ONNX model plus Python-backend tokenizer and post-processing models and an
ensemble that chains them, with README.md and provenance.json at the repository root, all written or none."""

from __future__ import annotations

import html
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.errors import (
    ConfigError,
    ModelSourceError,
    TritonExportError,
    WorkbenchError,
)
from workbench.tasks.base import PostProcessing
from workbench.triton.config import (
    CONFIG_FILENAME,
    ENSEMBLE_SUFFIX,
    ENSEMBLE_TEXT_INPUT,
    POOLING_SUFFIX,
    TOKENIZER_SUFFIX,
    TritonConfig,
    _check_model_name,
    _is_int,
    _model_config_pb2,
)
from workbench.triton.model import (
    TritonExportResult,
    _add_warmup,
    engine_model,
    written_model,
)
from workbench.triton.padding import PaddingPolicy
from workbench.triton.provenance import (
    _COMPUTED_PROVENANCE_KEYS,
    PROVENANCE_FILENAME,
    README_FILENAME,
    _provenance_record,
    _readme_text,
)
from workbench.triton.writer import Entry, checked_text, write_repository

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from tritonclient.grpc import model_config_pb2


# --------------------------------------------------------------------------------------------------------------
# Text in, the task's outputs out: tokenizer + model + the task's post-processing as one Triton ensemble


#: Tokenizer files copied next to the tokenizer model when the tokenizer folder has them. The model reads only
#: tokenizer.json; the others are kept so the folder is a complete Hugging Face tokenizer for people and tools.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
_TOKENIZER_INTEGER_TYPES = ("TYPE_INT64", "TYPE_INT32")
#: The model inputs the tokenizer model can produce (python_models/tokenizer_model.py's ENCODING_FIELDS).
TOKENIZER_OUTPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: Texts the export tokenizes both ways (the server's model.py and the workbench's tokenizer) to prove they agree.
_TOKENIZER_CHECK_TEXTS = (
    "A man is playing a guitar.",
    "",
    "Ünïcödé, ŝpéçïäl çhäràctérs — and émojis 🙂 are tokenized the same way.",
    "UPPER case, numbers 12345.678 and punctuation!?; (brackets) [more] {still}",
    " ".join(["A long sentence that is truncated at the sequence length."] * 80),
)


#: The keys of provenance.json that the export computes; the caller's `provenance` may not replace them.
@dataclass(frozen=True)
class TritonEnsembleResult:
    """A text-to-embedding (or text-to-outputs) ensemble written into a Triton model repository.

    Attributes:
        repository: The model repository.
        ensemble_name: The model clients call: input `TEXT` (strings), the task's outputs (`EMBEDDING` for
            sentence embeddings, `LABEL` and `PROBABILITIES` for classifiers; the model's raw outputs without
            post-processing).
        models: Role ("model", "tokenizer", the post-processing's role such as "pooling" or "labels", "ensemble")
            -> the folder written for it.
        readme: `<repository>/README.md`.
        provenance: `<repository>/provenance.json`.
        sequence_length: Every text is truncated to this many tokens (and padded to it with the fixed policy).
        output_names: The ensemble's outputs.
        padding: The padding and batching policy served (recorded in config.pbtxt and provenance.json).
    """

    repository: Path
    ensemble_name: str
    models: dict[str, TritonExportResult]
    readme: Path
    provenance: Path
    sequence_length: int
    output_names: tuple[str, ...]
    padding: PaddingPolicy | None = None

    @property
    def model_name(self) -> str:
        """The name clients call (the ensemble's)."""
        return self.ensemble_name

    @property
    def model_names(self) -> tuple[str, ...]:
        """Every model in the ensemble, the ensemble last (load the ensemble: Triton loads its steps with it)."""
        return tuple(result.model_name for result in self.models.values())

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(f for result in self.models.values() for f in result.files) + (self.readme, self.provenance)

    def to_dict(self) -> dict[str, Any]:
        return {
            "repository": str(self.repository),
            "ensemble_name": self.ensemble_name,
            "models": {role: result.to_dict() for role, result in self.models.items()},
            "readme": str(self.readme),
            "provenance": str(self.provenance),
            "sequence_length": self.sequence_length,
            "output_names": list(self.output_names),
            "padding": self.padding.to_dict() if self.padding is not None else None,
        }

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(role)}</td><td><code>{html.escape(result.model_name)}</code></td>"
            f"<td>{len(result.files)}</td></tr>"
            for role, result in self.models.items()
        )
        return (
            f"<b>Triton ensemble</b> <code>{html.escape(self.ensemble_name)}</code> "
            f"(TEXT &rarr; {html.escape(', '.join(self.output_names))}, {self.sequence_length} tokens) in "
            f"<code>{html.escape(str(self.repository))}</code>"
            f"<table><tr><th>role</th><th>model</th><th>files</th></tr>{rows}</table>"
            + (f"Padding: {html.escape(self.padding.describe())}.<br>" if self.padding is not None else "")
            + f"Serve it with <code>tritonserver --model-repository={html.escape(str(self.repository))}</code>."
        )


def ensemble_model_names(model_name: str, *, post_suffix: str | None = POOLING_SUFFIX) -> dict[str, str]:
    """Role -> model name for the ensemble of `model_name`: model, tokenizer, the task's post-processing (its
    role is its suffix without the underscore: "pooling", "labels", ...), ensemble."""
    names = {"model": model_name, "tokenizer": model_name + TOKENIZER_SUFFIX}
    if post_suffix is not None:
        names[post_suffix.lstrip("_")] = model_name + post_suffix
    names["ensemble"] = model_name + ENSEMBLE_SUFFIX
    for name in names.values():
        _check_model_name(name)
    return names


def check_ensemble(ensemble: model_config_pb2.ModelConfig, models: dict[str, Any]) -> None:
    """Check an ensemble's wiring against its steps' configs, as far as it can be checked without a server.

    Every step's model must be among `models` (name -> ModelConfig); every input_map key must be an input of that
    model and every output_map key one of its outputs; every model input must be mapped, from a tensor that the
    ensemble's inputs or an earlier step provide, with the same data type; every ensemble output must be
    produced by a step. A server load checks more (dims, versions), so this is a first line, not a substitute.

    Raises:
        TritonExportError: Every problem found, in one message.
    """
    pb2 = _model_config_pb2("Checking a Triton ensemble")
    type_name = pb2.DataType.Name
    available = {t.name: t.data_type for t in ensemble.input}
    problems: list[str] = []
    for index, step in enumerate(ensemble.ensemble_scheduling.step):
        label = f"step {index} ({step.model_name!r})"
        model = models.get(step.model_name)
        if model is None:
            problems.append(f"{label} names a model that is not part of the repository being written")
            continue
        inputs = {t.name: t.data_type for t in model.input}
        outputs = {t.name: t.data_type for t in model.output}
        for model_input, tensor in step.input_map.items():
            if model_input not in inputs:
                problems.append(f"{label} maps {model_input!r}, which is not an input of the model {sorted(inputs)}")
            elif tensor not in available:
                problems.append(
                    f"{label} reads ensemble tensor {tensor!r}, which no earlier step or ensemble input provides"
                )
            elif available[tensor] != inputs[model_input]:
                problems.append(
                    f"{label} input {model_input!r} is {type_name(inputs[model_input])} but ensemble "
                    f"tensor {tensor!r} is {type_name(available[tensor])}"
                )
        unmapped = sorted(set(inputs) - set(step.input_map))
        if unmapped:
            problems.append(f"{label} leaves model inputs {unmapped} unmapped")
        for model_output, tensor in step.output_map.items():
            if model_output not in outputs:
                problems.append(
                    f"{label} maps output {model_output!r}, which the model does not have {sorted(outputs)}"
                )
                continue
            if tensor in available:
                problems.append(f"{label} writes ensemble tensor {tensor!r}, which already has a producer")
            available[tensor] = outputs[model_output]
    for tensor in ensemble.output:
        if tensor.name not in available:
            problems.append(f"ensemble output {tensor.name!r} is produced by no step")
        elif available[tensor.name] != tensor.data_type:
            problems.append(
                f"ensemble output {tensor.name!r} is declared {type_name(tensor.data_type)} but its "
                f"step produces {type_name(available[tensor.name])}"
            )
    if problems:
        raise TritonExportError(
            f"The Triton ensemble {ensemble.name!r} is wired wrongly: {'; '.join(problems)}.",
            fix="report this as a workbench bug if export_triton_ensemble() wrote it; for a hand-made ensemble, map "
            "every model input from an ensemble input or an earlier step's output",
        )


@dataclass(frozen=True)
class _TokenizerPlan:
    """What the served tokenizer needs, settled before anything is written."""

    json_text: str  # tokenizer.json content
    copies: dict[str, Path]  # other tokenizer files to copy
    pad_id: int
    pad_token: str
    pad_type_id: int
    padding_side: str
    truncation_side: str
    source: Path


def _tokenizer_plan(
    tokenizer_dir: Path, names: list[str], sequence_length: int, policy: PaddingPolicy | None = None
) -> _TokenizerPlan:
    """Load the tokenizer the workbench uses, and prove that the server's tokenization gives the same ids."""
    from workbench.data import tokenize_batches
    from workbench.models import _load_tokenizer
    from workbench.triton.python_models import tokenizer_model

    if not tokenizer_dir.is_dir():
        raise ModelSourceError(
            f"Tokenizer folder {tokenizer_dir} {'is a file' if tokenizer_dir.exists() else 'does not exist'}.",
            expected="a folder written by tokenizer.save_pretrained() (tokenizer.json, tokenizer_config.json ...)",
            fix="pass the Hugging Face model folder, which holds the tokenizer files",
        )
    try:
        tokenizer = _load_tokenizer(tokenizer_dir)
    except WorkbenchError:
        raise
    except Exception as exc:
        raise ModelSourceError(
            f"Could not load a tokenizer from {tokenizer_dir}: {type(exc).__name__}: {exc}",
            fix="pass a folder written by tokenizer.save_pretrained()",
        ) from exc
    json_file = tokenizer_dir / "tokenizer.json"
    if json_file.is_file():
        json_text = json_file.read_text(encoding="utf-8")
    elif getattr(tokenizer, "is_fast", False):  # a fast tokenizer built from vocab files: save its tokenizer.json
        json_text = tokenizer.backend_tokenizer.to_str()
    else:
        raise TritonExportError(
            f"The tokenizer in {tokenizer_dir} has no tokenizer.json and is not a fast tokenizer, so the server "
            "cannot load it with the `tokenizers` package.",
            fix="save a fast tokenizer: AutoTokenizer.from_pretrained(DIR, use_fast=True).save_pretrained(DIR)",
        )
    if tokenizer.pad_token_id is None:
        raise TritonExportError(
            f"The tokenizer in {tokenizer_dir} has no padding token, so texts cannot be padded to one length.",
            fix="set one before exporting: tokenizer.pad_token = tokenizer.eos_token; tokenizer.save_pretrained(DIR)",
        )
    plan = _TokenizerPlan(
        json_text=json_text,
        copies={
            n: tokenizer_dir / n for n in TOKENIZER_FILES if n != "tokenizer.json" and (tokenizer_dir / n).is_file()
        },
        pad_id=int(tokenizer.pad_token_id),
        pad_token=str(tokenizer.pad_token),
        pad_type_id=int(getattr(tokenizer, "pad_token_type_id", 0) or 0),
        padding_side=str(getattr(tokenizer, "padding_side", "right")),
        truncation_side=str(getattr(tokenizer, "truncation_side", "right")),
        source=tokenizer_dir,
    )
    # The server tokenizes with `tokenizers` alone; the workbench measured accuracy with the transformers
    # tokenizer. Export only if both give the same arrays.
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="workbench-tokenizer-") as folder:
        path = Path(folder) / "tokenizer.json"
        path.write_text(json_text, encoding="utf-8")
        served_tokenizer = tokenizer_model.load_tokenizer(
            path,
            sequence_length=sequence_length,
            pad_id=plan.pad_id,
            pad_token=plan.pad_token,
            pad_type_id=plan.pad_type_id,
            padding_side=plan.padding_side,
            truncation_side=plan.truncation_side,
        )
    served = tokenizer_model.encode(served_tokenizer, list(_TOKENIZER_CHECK_TEXTS), {n: np.int64 for n in names})
    (expected,) = tokenize_batches(
        tokenizer,
        _TOKENIZER_CHECK_TEXTS,
        batch_size=len(_TOKENIZER_CHECK_TEXTS),
        sequence_length=sequence_length,
        input_names=names,
    )
    differ = [n for n in names if served[n].shape != expected[n].shape or not np.array_equal(served[n], expected[n])]
    if differ:
        raise TritonExportError(
            f"The served tokenizer (tokenizer.json read by the `tokenizers` package) gives different {differ} than "
            f"the workbench's tokenizer for {tokenizer_dir} at sequence_length {sequence_length}, so the server's "
            "embeddings would not be the ones the workbench measured.",
            fix="save the tokenizer again with a current transformers (tokenizer.save_pretrained(DIR)), which "
            "writes a tokenizer.json that matches it",
        )
    if policy is not None and policy.mode != "fixed":
        from workbench.triton.served import check_served_tokenization

        pad = {
            "direction": plan.padding_side,
            "pad_id": plan.pad_id,
            "pad_type_id": plan.pad_type_id,
            "pad_token": plan.pad_token,
            "truncation_side": plan.truncation_side,
        }
        check_served_tokenization(json_text, tokenizer, names, policy, pad, _TOKENIZER_CHECK_TEXTS, tokenizer_dir)
    return plan


def _string_parameters(cfg: Any, values: dict[str, Any]) -> None:
    for key, value in values.items():
        cfg.parameters[key].string_value = str(value)


def _tokenizer_config(
    pb2: Any,
    name: str,
    config: TritonConfig,
    outputs: dict[str, int],
    sequence_length: int,
    plan: _TokenizerPlan,
    policy: PaddingPolicy,
) -> Any:
    from workbench.triton.served import token_dims

    cfg = pb2.ModelConfig(name=name, backend="python", max_batch_size=config.max_batch_size)
    cfg.input.add(name=ENSEMBLE_TEXT_INPUT, data_type=pb2.DataType.Value("TYPE_STRING"), dims=[1])
    for output, data_type in outputs.items():
        cfg.output.add(name=output, data_type=data_type, dims=token_dims(policy))
    _python_model_scheduling(pb2, cfg, config, sequence_length)
    _string_parameters(
        cfg,
        {
            "sequence_length": sequence_length,
            "pad_id": plan.pad_id,
            "pad_token": plan.pad_token,
            "pad_type_id": plan.pad_type_id,
            "padding_side": plan.padding_side,
            "truncation_side": plan.truncation_side,
            "tokenizer_file": "tokenizer.json",
            **policy.to_parameters(),
        },
    )
    return cfg


def _python_model_scheduling(pb2: Any, cfg: Any, config: TritonConfig, warmup_length: int) -> None:
    """Python-backend steps always run on the CPU, one instance, batching whatever is queued (no extra delay)."""
    if config.dynamic_batching:
        cfg.dynamic_batching.SetInParent()
    cfg.instance_group.add(count=1, kind=pb2.ModelInstanceGroup.Kind.Value("KIND_CPU"))
    takes_text = any(t.data_type == pb2.DataType.Value("TYPE_STRING") for t in cfg.input)
    # Triton's zero-data samples of a text input are empty texts, which the tokenizer rightly refuses; a step that
    # only tokenizes has no session to warm up anyway (the engine model behind it gets its samples)
    if config.warmup and not takes_text:
        _add_warmup(cfg, config, warmup_length)


def _post_config(
    pb2: Any,
    name: str,
    config: TritonConfig,
    spec: PostProcessing,
    model_cfg: Any,
    tokenizer_outputs: Mapping[str, int],
    sequence_length: int,
    path: Path,
) -> Any:
    """The config of the task's Python post-processing model: the engine outputs and tokenizer tensors it reads,
    the outputs it returns, its parameters."""
    cfg = pb2.ModelConfig(name=name, backend="python", max_batch_size=config.max_batch_size)
    outputs = {t.name: t for t in model_cfg.output}
    for input_name in spec.model_inputs:
        if input_name not in outputs:
            raise TritonExportError(
                f"{path} has no output {input_name!r}, which the task's post-processing reads.",
                expected=f"one of {sorted(outputs)}",
                fix="serve the raw outputs (postprocess=False), or pass the model's task",
            )
        produced = outputs[input_name]
        cfg.input.add(name=produced.name, data_type=produced.data_type, dims=list(produced.dims))
    for extra in spec.extra_inputs:
        cfg.input.add(name=extra, data_type=tokenizer_outputs[extra], dims=[-1])
    for out in spec.outputs:
        cfg.output.add(name=out.name, data_type=pb2.DataType.Value(out.data_type), dims=list(out.dims))
    _python_model_scheduling(pb2, cfg, config, sequence_length)
    _string_parameters(cfg, dict(spec.parameters))
    return cfg


def _task_postprocessing(
    task: Any, model_cfg: Any, model_config: Mapping[str, Any], path: Path
) -> PostProcessing | None:
    """The task's post-processing for this model (the task is found from the outputs when not given)."""
    from workbench.errors import ConfigError as _ConfigError
    from workbench.tasks.base import Task, get_task, task_for_outputs

    ranks = {t.name: len(t.dims) + 1 for t in model_cfg.output}
    try:
        resolved = task if isinstance(task, Task) else get_task(task) if task is not None else task_for_outputs(ranks)
    except _ConfigError as exc:
        raise TritonExportError(
            f"The post-processing of {path} cannot be chosen: {exc.what}",
            expected=exc.expected,
            fix="pass task= the model's task, or postprocess=False for the raw outputs",
        ) from exc
    missing = [o for o in resolved.outputs if o not in ranks]
    if missing and resolved.name != "feature-extraction":
        raise TritonExportError(
            f"{path} has no output(s) {missing} for task {resolved.name!r}.",
            expected=f"outputs {list(resolved.outputs)}; it has {sorted(ranks)}",
            fix="pass the model's task, or postprocess=False for the raw outputs",
        )
    dims = {t.name: list(t.dims) for t in model_cfg.output}
    spec = resolved.postprocessing(
        output_names=[t.name for t in model_cfg.output], output_dims=dims, model_config=model_config
    )
    return spec  # None: the task has no post-processing, the ensemble returns the model's outputs


def _ensemble_config(
    pb2: Any,
    names: dict[str, str],
    config: TritonConfig,
    tokenizer_cfg: Any,
    model_cfg: Any,
    post_cfg: Any | None,
    post_role: str | None = None,
) -> Any:
    cfg = pb2.ModelConfig(name=names["ensemble"], platform="ensemble", max_batch_size=config.max_batch_size)
    cfg.input.add(name=ENSEMBLE_TEXT_INPUT, data_type=pb2.DataType.Value("TYPE_STRING"), dims=[1])
    final = post_cfg if post_cfg is not None else model_cfg
    for tensor in final.output:
        cfg.output.add().CopyFrom(tensor)
    steps = cfg.ensemble_scheduling.step
    tokenize = steps.add(model_name=names["tokenizer"], model_version=-1)
    tokenize.input_map[ENSEMBLE_TEXT_INPUT] = ENSEMBLE_TEXT_INPUT
    for tensor in tokenizer_cfg.output:
        tokenize.output_map[tensor.name] = tensor.name
    run = steps.add(model_name=names["model"], model_version=-1)
    for tensor in model_cfg.input:
        run.input_map[tensor.name] = tensor.name
    model_outputs = {t.name for t in model_cfg.output}
    if post_cfg is None:
        for tensor in model_cfg.output:
            run.output_map[tensor.name] = tensor.name
    else:
        for tensor in post_cfg.input:
            if tensor.name in model_outputs:
                run.output_map[tensor.name] = tensor.name
        post = steps.add(model_name=names[post_role or ""], model_version=-1)
        for tensor in post_cfg.input:
            post.input_map[tensor.name] = tensor.name
        for tensor in post_cfg.output:
            post.output_map[tensor.name] = tensor.name
    return cfg


def _resolve_padding(padding: PaddingPolicy | None, sequence_length: int) -> PaddingPolicy:
    from workbench.triton.served import resolve_padding

    return resolve_padding(padding, sequence_length)


def _served_names(
    chain: dict[str, str], policy: PaddingPolicy, spec: PostProcessing | None, post_role: str | None
) -> dict[str, str]:
    """The models written: the whole chain, or for the BLS design no tokenizer model (the BLS model tokenizes)
    and no post-processing model when its source offers `postprocess()` (the BLS model runs it)."""
    if policy.batching != "bls":
        return dict(chain)
    from workbench.triton.python_models import FOLDER
    from workbench.triton.served import inline_postprocessing

    names = {role: name for role, name in chain.items() if role != "tokenizer"}
    if spec is not None and post_role is not None and inline_postprocessing(FOLDER / spec.source):
        del names[post_role]
    return names


def export_triton_ensemble(
    onnx_path: str | os.PathLike[str],
    repository: str | os.PathLike[str],
    tokenizer_dir: str | os.PathLike[str],
    config: TritonConfig = TritonConfig(),
    *,
    sequence_length: int,
    task: Any = None,
    model_config: Mapping[str, Any] | None = None,
    postprocess: bool = True,
    padding: PaddingPolicy | None = None,
    provenance: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> TritonEnsembleResult:
    """Write a model repository that Triton serves as text in, the task's outputs out.

    With `config.model_name` = NAME it writes, all or nothing:

    - `NAME/`: the ONNX model, as :func:`export_triton` writes it (dynamic batching, instances, warmup and
      accelerators from `config`);
    - `NAME_tokenizer/`: a Python-backend model that reads `tokenizer.json` (copied from `tokenizer_dir` into its
      version folder, with the other tokenizer files; nothing is downloaded) and turns `TEXT` (TYPE_STRING,
      dims [1]) into the model's integer inputs, truncated and padded to `sequence_length` so that requests
      from different clients batch together;
    - the task's post-processing (workbench.tasks: `Task.postprocessing()`), a Python-backend model (numpy only)
      computing what the library computes: `NAME_pooling/` for sentence embeddings (attention-mask-aware mean
      pooling, L2-normalised: EMBEDDING), `NAME_labels/` for classifiers (LABEL from id2label, PROBABILITIES);
    - `NAME_ensemble/`: platform "ensemble", wiring TEXT -> tokenizer -> model -> post-processing (with
      `postprocess=False`, the model's raw outputs);
    - `README.md` and `provenance.json` at the repository root.

    Before anything is written: every config is rendered and parsed back strictly, the ensemble's wiring is
    checked (:func:`check_ensemble`), and the server's tokenization is checked to give exactly the workbench's
    ids on sample texts. Existing entries are refused without `overwrite`, before anything is written.

    Args:
        onnx_path: The .onnx model (inputs among input_ids, attention_mask, token_type_ids).
        repository: The model repository folder; created if missing.
        tokenizer_dir: The folder with the model's tokenizer files (a Hugging Face model folder).
        config: Name, batching, instances, warmup, accelerators; Python-backend steps always get one CPU
            instance and batch whatever is queued.
        sequence_length: Tokens per text (longer texts are truncated, shorter ones padded).
        task: The model's task (a workbench.tasks Task or its name); None: found from the model's outputs.
        model_config: The checkpoint's config.json (the classifier's id2label names its labels).
        postprocess: False serves the model's raw outputs, without the task's post-processing.
        padding: How texts are padded and batched (workbench.triton.padding.PaddingPolicy, whose max_length must
            be `sequence_length`); default `PaddingPolicy(max_length=sequence_length)`: the ensemble above with
            each request padded to the smallest of 16, 32, 64, ... tokens that holds its longest text (outputs
            dims [-1]), which the engine's dynamic batcher merges per bucket. `PaddingPolicy.fixed(
            sequence_length)` pads every text to sequence_length; `PaddingPolicy(batching="bls")` makes
            `NAME_ensemble` a Python model that tokenizes each dynamic batch itself and calls NAME per bucket
            through BLS (no tokenizer model; a post-processing whose source offers `postprocess()`, such as mean
            pooling, runs inside it). The policy goes into the config parameters and provenance.json.
        provenance: Extra provenance.json entries, for example `source_model`, `precision_plan` (a PrecisionPlan
            or its dict), `accuracy`, `speed`. Objects with to_dict() are converted. The keys the export writes
            itself (format, models, libraries, hardware, ...) cannot be replaced.
        overwrite: Replace existing model folders, README.md and provenance.json (only once all new ones are
            complete).

    Returns:
        The ensemble's name and every folder and file written.

    Raises:
        ModelSourceError: The ONNX file or the tokenizer folder is missing or invalid.
        TritonExportError: The model cannot be served this way (an input no tokenizer produces, no output to
            pool, a static batch dimension ...), the served tokenizer would differ from the workbench's, an entry
            exists and overwrite is False, or writing failed.
        ConfigError: Invalid arguments (config, sequence_length, task, provenance).
    """
    if not isinstance(config, TritonConfig):
        raise ConfigError(
            f"export_triton_ensemble() takes a TritonConfig, not {type(config).__name__}.",
            fix="pass TritonConfig(...) or TritonConfig.preset('cpu')",
        )
    if not _is_int(sequence_length) or sequence_length < 2:
        raise ConfigError(
            f"sequence_length must be an integer >= 2, got {sequence_length!r}.",
            fix="pass the sequence length the model was measured at, for example 128",
        )
    if not isinstance(postprocess, bool):
        raise ConfigError(f"postprocess must be True or False, got {postprocess!r}.")
    policy = _resolve_padding(padding, sequence_length)
    repository = Path(repository)
    tokenizer_dir = Path(tokenizer_dir)
    if repository.exists() and not repository.is_dir():
        raise TritonExportError(
            f"The model repository {repository} is a file, not a folder.",
            fix="pass a folder (it may already hold other models)",
        )
    pb2 = _model_config_pb2("Writing a Triton model config")
    path = Path(onnx_path)
    # the one engine-specific step: an ONNX model or an OpenVINO IR (by the engine that loads the file)
    model_cfg, model_files = engine_model(onnx_path, config, warmup_length=sequence_length)
    spec = _task_postprocessing(task, model_cfg, model_config or {}, path) if postprocess else None
    chain = ensemble_model_names(config.model_name, post_suffix=spec.suffix if spec is not None else None)
    post_role = spec.suffix.lstrip("_") if spec is not None else None
    names = _served_names(chain, policy, spec, post_role)  # what is written (the BLS design writes fewer)
    entry_names = [*names.values(), README_FILENAME, PROVENANCE_FILENAME]
    existing = [n for n in entry_names if (repository / n).exists() or (repository / n).is_symlink()]
    if existing and not overwrite:
        raise TritonExportError(
            f"{', '.join(str(repository / n) for n in existing)} already exist{'s' if len(existing) == 1 else ''} "
            "in the repository; nothing was changed.",
            fix="pass overwrite=True to replace them, or choose another TritonConfig.model_name (or repository)",
        )

    tokenizer_outputs: dict[str, int] = {}
    for tensor in model_cfg.input:
        type_name = pb2.DataType.Name(tensor.data_type)
        if tensor.name not in TOKENIZER_OUTPUTS or type_name not in _TOKENIZER_INTEGER_TYPES:
            raise TritonExportError(
                f"{path} takes input {tensor.name!r} ({type_name}), which a text tokenizer does not produce.",
                expected=f"inputs among {list(TOKENIZER_OUTPUTS)}, of type {' or '.join(_TOKENIZER_INTEGER_TYPES)}",
                fix="serve this model with export_triton() and tokenize on the client instead",
            )
        if list(tensor.dims) not in (([-1], [sequence_length]) if policy.mode == "fixed" else ([-1],)):
            raise TritonExportError(
                f"{path} input {tensor.name!r} has dims {list(tensor.dims)} after the batch dimension, which does "
                f"not take {sequence_length} tokens.",
                fix="export the model with a dynamic sequence axis, or pass that fixed length as sequence_length "
                "with PaddingPolicy.fixed(sequence_length)",
            )
        tokenizer_outputs[tensor.name] = tensor.data_type
    for extra in spec.extra_inputs if spec is not None else ():
        if extra not in TOKENIZER_OUTPUTS:
            raise TritonExportError(
                f"The task's post-processing reads {extra!r}, which the tokenizer does not make.",
                expected=f"tensors among {list(TOKENIZER_OUTPUTS)}",
            )
        tokenizer_outputs.setdefault(extra, pb2.DataType.Value("TYPE_INT64"))
    plan = _tokenizer_plan(tokenizer_dir, list(tokenizer_outputs), sequence_length, policy)

    tokenizer_cfg = _tokenizer_config(pb2, chain["tokenizer"], config, tokenizer_outputs, sequence_length, plan, policy)
    post_cfg = (
        _post_config(pb2, chain[post_role], config, spec, model_cfg, tokenizer_outputs, sequence_length, path)
        if spec is not None and post_role is not None
        else None
    )
    ensemble_cfg = _ensemble_config(pb2, chain, config, tokenizer_cfg, model_cfg, post_cfg, post_role)
    configs = {chain["tokenizer"]: tokenizer_cfg, chain["model"]: model_cfg, chain["ensemble"]: ensemble_cfg}
    if post_cfg is not None and post_role is not None:
        configs[chain[post_role]] = post_cfg
    check_ensemble(ensemble_cfg, configs)
    if policy.batching == "bls":  # the checked chain, with tokenizing and batching moved into one BLS model
        from workbench.triton.served import bls_configs

        configs = {
            cfg.name: cfg
            for cfg in bls_configs(
                pb2,
                chain,
                config,
                policy,
                tokenizer_cfg,
                model_cfg,
                post_cfg,
                ensemble_cfg,
                post_role=post_role,
                inline=post_role is not None and post_role not in names,
            ).values()
        }
    model_cfg = configs[names["model"]]
    texts = {name: checked_text(cfg) for name, cfg in configs.items()}
    output_names = tuple(t.name for t in ensemble_cfg.output)

    record = _provenance_record(
        names=names,
        onnx_path=path,
        tokenizer_dir=tokenizer_dir,
        tokenizer_json=plan.json_text,
        sequence_length=sequence_length,
        postprocessing=spec,
        config=config,
        provided=provenance,
        padding=policy,
    )
    readme = _readme_text(
        names,
        sequence_length=sequence_length,
        postprocessing=spec,
        padding=policy,
        output_names=output_names,
        config=config,
        model_cfg=model_cfg,
        provided=[k for k in record if k not in _COMPUTED_PROVENANCE_KEYS],
    )

    def model_folder(name: str, populate_versions: Callable[[Path], None]) -> Callable[[Path], None]:
        def populate(folder: Path) -> None:
            folder.mkdir()
            (folder / CONFIG_FILENAME).write_text(texts[name], encoding="utf-8")
            populate_versions(folder)

        return populate

    def python_model(source: Path, extra: Callable[[Path], None] | None = None) -> Callable[[Path], None]:
        def populate(folder: Path) -> None:
            version_dir = folder / str(config.version)
            version_dir.mkdir()
            shutil.copyfile(source, version_dir / "model.py")
            if extra is not None:
                extra(version_dir)

        return populate

    def tokenizer_files(version_dir: Path) -> None:
        (version_dir / "tokenizer.json").write_text(plan.json_text, encoding="utf-8")
        for name, source in plan.copies.items():
            shutil.copyfile(source, version_dir / name)

    def empty_version(folder: Path) -> None:
        (folder / str(config.version)).mkdir()  # Triton wants a version folder, even for an ensemble

    def text_file(content: str) -> Callable[[Path], None]:
        def write(target: Path) -> None:
            target.write_text(content, encoding="utf-8")

        return write

    import json

    from workbench.triton.python_models import BLS_MODEL, FOLDER, TOKENIZER_MODEL

    def bls_files(version_dir: Path) -> None:
        tokenizer_files(version_dir)
        shutil.copyfile(TOKENIZER_MODEL, version_dir / TOKENIZER_MODEL.name)  # bls_model.py imports it
        if spec is not None and post_role not in names:  # the post-processing runs inside the BLS model
            shutil.copyfile(FOLDER / spec.source, version_dir / "postprocess_model.py")

    roles = {"model": model_files}
    if "tokenizer" in names:
        roles["tokenizer"] = python_model(TOKENIZER_MODEL, tokenizer_files)
    if spec is not None and post_role is not None and post_role in names:
        roles[post_role] = python_model(FOLDER / spec.source)
    roles["ensemble"] = python_model(BLS_MODEL, bls_files) if policy.batching == "bls" else empty_version
    entries = [Entry(names[role], model_folder(names[role], populate)) for role, populate in roles.items()]
    entries.append(Entry(README_FILENAME, text_file(readme)))
    entries.append(Entry(PROVENANCE_FILENAME, text_file(json.dumps(record, indent=2, sort_keys=False) + "\n")))

    write_repository(
        repository,
        entries,
        overwrite=overwrite,
        what=f"the Triton ensemble into {repository}",
        fix="check free disk space and permissions on the repository; if another process created one of "
        f"{entry_names} meanwhile, remove it or pass overwrite=True",
    )

    return TritonEnsembleResult(
        repository=repository,
        ensemble_name=names["ensemble"],
        models={role: written_model(repository, names[role], texts[names[role]]) for role in roles},
        readme=repository / README_FILENAME,
        provenance=repository / PROVENANCE_FILENAME,
        sequence_length=sequence_length,
        output_names=output_names,
        padding=policy,
    )
