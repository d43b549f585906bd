"""The serving policy in an exported text repository: which padding the tokenizer applies, and, with
`PaddingPolicy(batching="bls")`, the Python model that replaces the ensemble's tokenizer step and batches texts
of any length (python_models/bls_model.py). `export_triton_ensemble` calls these; they do not write files."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from workbench.errors import ConfigError, TritonExportError
from workbench.triton.config import ENSEMBLE_TEXT_INPUT, TritonConfig
from workbench.triton.padding import PaddingPolicy

#: Role of the model clients call (an ensemble, or with batching "bls" the BLS Python model of the same name).
ENTRY_ROLE = "ensemble"


def resolve_padding(padding: PaddingPolicy | None, sequence_length: int) -> PaddingPolicy:
    """The policy to serve: `padding`, or the default policy at `sequence_length`; its max_length must agree."""
    if padding is None:
        return PaddingPolicy(max_length=sequence_length)
    if not isinstance(padding, PaddingPolicy):
        raise ConfigError(
            f"padding must be a PaddingPolicy or None, not {type(padding).__name__}.",
            fix="pass PaddingPolicy(max_length=...) or PaddingPolicy.preset('fixed', max_length=...)",
        )
    if padding.max_length != sequence_length:
        raise ConfigError(
            f"PaddingPolicy.max_length ({padding.max_length}) differs from sequence_length ({sequence_length}).",
            fix=f"pass PaddingPolicy(..., max_length={sequence_length}) (the length texts are truncated to)",
        )
    return padding


def token_dims(policy: PaddingPolicy) -> list[int]:
    """The tokenizer outputs' dims after the batch dimension: the fixed length, or -1."""
    return [policy.max_length] if policy.mode == "fixed" else [-1]


def check_served_tokenization(
    json_text: str,
    tokenizer: Any,
    names: list[str],
    policy: PaddingPolicy,
    pad: dict[str, Any],
    texts: tuple[str, ...],
    tokenizer_dir: Path,
) -> None:
    """Prove that the server pads each text as `policy.encode` (what the accuracy stage evaluates) does.

    Each text alone (its own group): the served `tokenizers` encoding padded to `policy.padded_length` must give
    exactly the arrays of `policy.encode(tokenizer, [text], 1)`.
    """
    import numpy as np

    from workbench.triton.python_models import tokenizer_model

    with tempfile.TemporaryDirectory(prefix="workbench-tokenizer-") as folder:
        path = Path(folder) / "tokenizer.json"
        path.write_text(json_text, encoding="utf-8")
        served_tokenizer = tokenizer_model.load_tokenizer(
            path,
            sequence_length=policy.max_length,
            pad_id=pad["pad_id"],
            pad_token=pad["pad_token"],
            pad_type_id=pad["pad_type_id"],
            padding_side=pad["direction"],
            truncation_side=pad["truncation_side"],
            padding=policy.mode,
        )
    pad_arguments = {k: v for k, v in pad.items() if k != "truncation_side"}
    for text in texts:
        (encoding,) = tokenizer_model.encodings(served_tokenizer, [text])
        served = tokenizer_model.stack(
            [encoding], {n: np.int64 for n in names}, policy.padded_length(len(encoding.ids)), pad_arguments
        )
        (expected,) = policy.encode(tokenizer, [text], 1, input_names=names)
        differ = [
            n for n in names if served[n].shape != expected[n].shape or not np.array_equal(served[n], expected[n])
        ]
        if differ:
            raise TritonExportError(
                f"Under the padding policy ({policy.describe()}) the served tokenizer gives different {differ} than "
                f"the workbench's tokenizer for {tokenizer_dir} on {text[:40]!r}, so the server's outputs would not "
                "be the ones the workbench measured.",
                fix="save the tokenizer again with a current transformers (tokenizer.save_pretrained(DIR)), or "
                "serve PaddingPolicy.fixed(sequence_length)",
            )


def inline_postprocessing(source: Path | None) -> bool:
    """Whether a post-processing model's source offers `postprocess(inputs, parameters, output_names)`, which the
    BLS model then runs in its own process (one Triton round trip less per engine call)."""
    if source is None:
        return False
    import ast

    tree = ast.parse(Path(source).read_text(encoding="utf-8"))
    return any(isinstance(node, ast.FunctionDef) and node.name == "postprocess" for node in tree.body)


def bls_configs(
    pb2: Any,
    names: dict[str, str],
    config: TritonConfig,
    policy: PaddingPolicy,
    tokenizer_cfg: Any,
    model_cfg: Any,
    post_cfg: Any | None,
    ensemble_cfg: Any,
    *,
    post_role: str | None = None,
    inline: bool = False,
) -> dict[str, Any]:
    """Role -> ModelConfig of the BLS design, from the checked ensemble design's configs.

    The client-facing model keeps the ensemble's name, input and outputs, so clients do not change with the
    policy. It gets the dynamic batching (delay, preferred sizes) and instance count of `config`; the engine is
    then called with batches already formed, so its own batcher waits no longer (delay 0, no preferred sizes).
    With `inline`, the post-processing runs inside the BLS model (its source is copied next to it) and has no
    model of its own.
    """
    final_outputs = list(ensemble_cfg.output)
    variable = [t.name for t in final_outputs if -1 in list(t.dims)]
    if variable:
        raise TritonExportError(
            f"The served outputs {variable} have a variable (sequence) axis, which the BLS design cannot return: "
            "the texts of one request may be padded to different lengths.",
            fix="serve with pooling (or the task's post-processing), or PaddingPolicy(batching='ensemble')",
        )
    cfg = pb2.ModelConfig(name=names["ensemble"], backend="python", max_batch_size=config.max_batch_size)
    cfg.input.add(name=ENSEMBLE_TEXT_INPUT, data_type=pb2.DataType.Value("TYPE_STRING"), dims=[1])
    for tensor in final_outputs:
        cfg.output.add().CopyFrom(tensor)
    if config.dynamic_batching:
        cfg.dynamic_batching.SetInParent()
        cfg.dynamic_batching.preferred_batch_size.extend(config.preferred_batch_sizes)
        cfg.dynamic_batching.max_queue_delay_microseconds = config.max_queue_delay_us
    cfg.instance_group.add(count=config.instance_count, kind=pb2.ModelInstanceGroup.Kind.Value("KIND_CPU"))
    for key, value in tokenizer_cfg.parameters.items():
        cfg.parameters[key].string_value = value.string_value
    type_name = pb2.DataType.Name
    engine_outputs = (
        [t.name for t in post_cfg.input if t.name in {o.name for o in model_cfg.output}]
        if post_cfg is not None
        else [t.name for t in model_cfg.output]
    )
    parameters = {
        "engine_model": names["model"],
        "engine_inputs": json.dumps({t.name: type_name(t.data_type) for t in model_cfg.input}),
        "engine_outputs": json.dumps(engine_outputs),
        "postprocess_model": names[post_role] if post_cfg is not None and post_role and not inline else "",
        "postprocess_inputs": json.dumps([t.name for t in post_cfg.input] if post_cfg is not None else []),
        "postprocess_inline": "true" if post_cfg is not None and inline else "false",
        "postprocess_parameters": json.dumps(
            {k: v.string_value for k, v in post_cfg.parameters.items()} if post_cfg is not None else {}
        ),
    }
    for key, value in parameters.items():
        cfg.parameters[key].string_value = value
    engine = type(model_cfg)()
    engine.CopyFrom(model_cfg)
    if engine.HasField("dynamic_batching"):
        del engine.dynamic_batching.preferred_batch_size[:]
        engine.dynamic_batching.max_queue_delay_microseconds = 0
    configs = {"model": engine}
    if post_cfg is not None and post_role is not None and not inline:
        configs[post_role] = post_cfg
    configs[ENTRY_ROLE] = cfg
    return configs
