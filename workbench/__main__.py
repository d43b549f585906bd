"""Command line: `python -m workbench run RECIPE`, `python -m workbench summary PATH`, `python -m workbench doctor`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="workbench", description="Inference Workbench")
    commands = parser.add_subparsers(dest="command", required=True)
    summary = commands.add_parser("summary", help="print the table of a run's summary.json")
    summary.add_argument("path", type=Path, help="summary.json, or the run folder that holds it")
    commands.add_parser("doctor", help="check the installation: versions, ONNX Runtime conflicts, GPU, TensorRT")
    run = commands.add_parser(
        "run", help="replay a recipe headless (one progress step per pipeline step) and print the summary table"
    )
    run.add_argument("recipe", type=Path, help="recipe.json (Workbench.save_recipe), or the run folder that holds it")
    run.add_argument(
        "--output-dir", type=Path, default=None, help="where the replay writes (default: the recipe's own output_dir)"
    )
    run.add_argument(
        "--no-check-inputs",
        action="store_true",
        help="replay even when the model or sentence files differ from the recorded sha256",
    )
    run.add_argument(
        "--check",
        action="store_true",
        help="exit with an error when a model file differs from the one the recording wrote",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    from workbench.errors import WorkbenchError

    try:
        if args.command == "summary":
            from workbench.summary import format_summary

            path = args.path / "summary.json" if args.path.is_dir() else args.path
            if not path.is_file():
                raise WorkbenchError(f"No summary at {path}.", fix="run `make demo` (or the quickstart notebook) first")
            try:
                print(format_summary(json.loads(path.read_text())))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise WorkbenchError(
                    f"{path} is not a workbench summary ({type(exc).__name__}: {exc}).",
                    fix="point at the summary.json a quickstart run wrote",
                ) from exc
        elif args.command == "run":
            from workbench.recipe import finish, replay
            from workbench.summary import format_summary

            pipeline = replay(
                args.recipe,
                output_dir=args.output_dir,
                progress=not args.quiet,
                check_inputs=not args.no_check_inputs,
                check=args.check,
                save=False,
            )
            written = finish(pipeline)
            print(format_summary(written))
            check = pipeline.output_check
            assert check is not None  # replay() always compares the files it wrote with the recording's
            print(check.headline())
            if check.choice is not None:
                print(_near_tie(pipeline, check.choice))
            print(check)
            print(f"summary: {pipeline.output_dir / 'summary.json'}")
        elif args.command == "doctor":
            from workbench.doctor import report

            print(report())
    except WorkbenchError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


def _near_tie(pipeline: object, choice: tuple[str | None, str | None]) -> str:
    """The two candidates' p50 in the replay's own benchmark: how near-tied the choice between them was."""
    timings = getattr(pipeline, "results", {}).get("benchmark")
    chosen = getattr(pipeline, "results", {}).get("choose")
    if timings is None or chosen is None:
        return "  (no benchmark in the replay to compare the two candidates)"
    recorded, replayed = choice
    values = {name: timings.p50(name, chosen.batch, chosen.seq) for name in (replayed, recorded) if name}
    shown = ", ".join(
        f"{name} {value:.2f} ms" if value is not None else f"{name} not timed" for name, value in values.items()
    )
    return f"  p50 at batch {chosen.batch}, seq {chosen.seq} in this replay: {shown}"


if __name__ == "__main__":
    sys.exit(main())
