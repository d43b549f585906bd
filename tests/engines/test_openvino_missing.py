"""Without the openvino extra the workbench still imports, `doctor` says what is missing, and asking for an OpenVINO
runner, conversion or NNCF INT8 raises MissingDependency naming the extra. openvino and nncf are made unimportable
in a fresh interpreter by a sys.meta_path blocker, so this runs whether or not they are installed here."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import importlib.abc, json, sys

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("openvino", "nncf"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name.split(".")[0])
            return None

    sys.meta_path.insert(0, Blocker())
    import workbench
    from workbench.doctor import report
    from workbench.engines.base import Candidate, get_engine
    from workbench.errors import MissingDependency

    result = {"imported": "openvino" in sys.modules or "nncf" in sys.modules, "doctor": report(), "errors": {}}

    def attempt(label, call):
        try:
            call()
            result["errors"][label] = None
        except MissingDependency as exc:
            result["errors"][label] = str(exc)

    def runner():
        with get_engine("openvino").runner("model.xml"):
            pass

    def candidate():
        with Candidate("int8", "model.xml", "openvino", "int8_nncf").runner():
            pass

    def conversion():
        from workbench.engines.openvino import convert_to_openvino
        convert_to_openvino("model.onnx", "out/model.xml")

    def nncf_int8():
        import numpy as np
        from workbench.stages.precision.plan import PrecisionPlan
        feeds = [{"input_ids": np.ones((1, 4), np.int64)}]
        PrecisionPlan.preset("cpu_int8_nncf").convert("model.onnx", "out/int8.xml", calibration_feeds=feeds)

    for label, call in (("runner", runner), ("candidate", candidate), ("conversion", conversion),
                        ("nncf_int8", nncf_int8)):
        attempt(label, call)
    print(json.dumps(result))
""")


def test_without_openvino_the_workbench_imports_and_names_the_extra(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["imported"] is False
    line = next(line for line in result["doctor"].splitlines() if line.startswith("  openvino:"))  # the Engines list
    assert "NOT available" in line and "[openvino]" in line and "'openvino'" in line
    assert any(line.startswith("  onnxruntime: available") for line in result["doctor"].splitlines())
    for label, message in result["errors"].items():
        assert message is not None, f"{label} did not raise MissingDependency"
        assert "inference-workbench[openvino]" in message, (label, message)
    assert not (tmp_path / "out").exists(), "a refused step writes nothing"
