"""A stage (or the whole pipeline) in a process of its own that a test SIGKILLs at a chosen point.

    python kill_script.py MODE OUTPUT HOLD MARKER [ARGS_JSON]

MODE: pipeline, export, quantize_dynamic, quantize_static, calibrate or triton. HOLD says where the process
stops to be killed: "publish" (the first os.replace/os.rename of a hidden *.partial entry into place, when
everything is staged), "calibrate" (inside calibration, after the first chunk), or "none". When it gets there it
writes MARKER and sleeps (bounded), so the test kills it exactly there, with its temporary files on disk.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

HOLD_S = 120.0


def hold(marker: Path) -> None:
    marker.write_text(str(os.getpid()))
    time.sleep(HOLD_S)
    raise SystemExit("not killed within the hold time")


def install_hold(point: str, marker: Path, step: str | None) -> None:
    if point == "publish":
        real_replace, real_rename = os.replace, os.rename

        def held(real):
            def move(source, destination, *args, **kwargs):
                staged = Path(os.fspath(source))
                if any(p.name.endswith(".partial") for p in (staged, *staged.parents)) and (
                    step is None or step in str(destination)
                ):
                    hold(marker)
                return real(source, destination, *args, **kwargs)

            return move

        os.replace, os.rename = held(real_replace), held(real_rename)
    elif point == "calibrate":
        from workbench.stages.precision import calibrate

        real_next = calibrate.FeedReader.get_next
        seen = {"count": 0}

        def get_next(self):
            seen["count"] += 1
            if seen["count"] > 1:
                hold(marker)
            return real_next(self)

        calibrate.FeedReader.get_next = get_next


def main() -> None:
    mode, output, point, marker = sys.argv[1], Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
    args = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
    install_hold(point, marker, args.pop("hold_step", None))
    if mode == "pipeline":
        from workbench.pipeline import Pipeline, PipelineParameters
        from workbench.stages.accuracy.compare import AccuracyBudget

        Pipeline(PipelineParameters(output_dir=str(output), **args), budget=AccuracyBudget.preset("relaxed")).run_all()
    elif mode == "export":
        from workbench.models import load_model
        from workbench.stages.export import export_onnx

        export_onnx(load_model(args["model"]), output / "model.onnx")
    elif mode in ("quantize_dynamic", "quantize_static", "calibrate"):
        from workbench.data import tokenize_batches
        from workbench.models import load_model
        from workbench.stages.precision import quantize
        from workbench.stages.precision.calibrate import calibrate

        tokenizer = load_model(args["tokenizer"]).load_tokenizer()
        feeds = tokenize_batches(
            tokenizer,
            ["the cat sat on the mat", "revenue grew 12%", "how do I reset it?"],
            batch_size=1,
            sequence_length=16,
        )
        if mode == "quantize_dynamic":
            quantize.quantize_dynamic(args["model"], output / "int8.onnx")
        elif mode == "quantize_static":
            quantize.quantize_static(
                args["model"], output / "int8.onnx", feeds, cache_dir=output / "cache", progress=False
            )
        else:
            calibrate(args["model"], feeds, cache_dir=output / "cache", progress=False)
    elif mode == "triton":
        from workbench.triton.config import TritonConfig
        from workbench.triton.ensemble import export_triton_ensemble

        export_triton_ensemble(
            args["model"],
            output / "repo",
            args["tokenizer"],
            TritonConfig(model_name="tiny"),
            sequence_length=16,
            overwrite=bool(args.get("overwrite", False)),
        )
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
