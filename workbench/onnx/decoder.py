"""The spec of an exported decoder, stored in the ONNX file's metadata (`workbench.decoder`)."""

from __future__ import annotations

import os
from pathlib import Path

from workbench._lazy import require
from workbench.decoding import SPEC_METADATA_KEY, DecoderSpec
from workbench.errors import ModelSourceError


def read_decoder_spec(path: str | os.PathLike[str]) -> DecoderSpec:
    """The spec an exported decoder carries in its metadata (kept through fusion and quantization).

    Raises:
        ModelSourceError: The file has no decoder spec (it was not written by export_decoder, or a tool dropped
            its metadata).
    """
    onnx = require("onnx", purpose="Reading an ONNX decoder")
    from workbench.onnx.io import check_onnx_file

    path = Path(path)
    check_onnx_file(path)
    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    if SPEC_METADATA_KEY not in props:
        raise ModelSourceError(
            f"{path} carries no decoder spec (metadata key {SPEC_METADATA_KEY!r}).",
            expected="an ONNX decoder written by export_decoder() or a stage after it (they keep the metadata)",
            fix="export the causal LM with workbench.stages.generation.export.export_decoder(), or pass spec= "
            "explicitly",
        )
    spec = DecoderSpec.from_json(props[SPEC_METADATA_KEY])
    inputs = {i.name for i in model.graph.input}
    missing = [n for n in spec.input_names() if n not in inputs]
    if missing:
        raise ModelSourceError(
            f"{path}'s decoder spec names inputs the graph lacks: {missing}.",
            fix="export the decoder again; its graph and metadata no longer agree",
        )
    return spec
