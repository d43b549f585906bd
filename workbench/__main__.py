"""Command line: `python -m workbench summary PATH`, `python -m workbench doctor`."""

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
        elif args.command == "doctor":
            from workbench.doctor import report

            print(report())
    except WorkbenchError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
