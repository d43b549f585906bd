"""Thin ipywidgets views over the library's stage calls, plus the helpers that build them.

Re-exports only, resolved lazily (PEP 562): `import workbench.ui` imports nothing; using a name imports
ipywidgets and the module that defines it, never torch or onnxruntime (each view imports its stage when it runs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from workbench._lazy import lazy_exports

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "StageView": "workbench.ui.base",
    "controls_for": "workbench.ui.controls",
    "config_from_controls": "workbench.ui.controls",
    "field_labels": "workbench.ui.controls",
    "InspectView": "workbench.ui.surgery",
    "SurgeryView": "workbench.ui.surgery",
    "PrecisionView": "workbench.ui.precision",
    "BenchmarkView": "workbench.ui.deploy",
    "ChoiceView": "workbench.ui.deploy",
    "ExportView": "workbench.ui.deploy",
    "ServingView": "workbench.ui.serving",
    "AccuracyView": "workbench.ui.accuracy",
    "DiagnosisView": "workbench.ui.accuracy",
    "FixView": "workbench.ui.accuracy",
    "Workbench": "workbench.ui.workbench",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from workbench.ui.accuracy import AccuracyView, DiagnosisView, FixView
    from workbench.ui.base import StageView
    from workbench.ui.controls import config_from_controls, controls_for, field_labels
    from workbench.ui.deploy import BenchmarkView, ChoiceView, ExportView
    from workbench.ui.serving import ServingView
    from workbench.ui.surgery import InspectView, SurgeryView
    from workbench.ui.workbench import Workbench
