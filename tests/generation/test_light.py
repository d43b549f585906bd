"""The generation modules import no heavy package until they run (`import workbench` stays light)."""

from __future__ import annotations

import pytest

from tests.test_import import _heavy_modules_after


@pytest.mark.parametrize(
    "module",
    [
        "workbench.decoding",
        "workbench.tasks.generation",
        "workbench.stages.generation.export",
        "workbench.stages.generation.generate",
        "workbench.stages.generation.accuracy",
        "workbench.stages.generation.summary",
        "workbench.triton.generation",
    ],
)
def test_generation_modules_import_light(module):
    assert _heavy_modules_after(f"import {module}") == []


def test_generation_configs_from_the_top_level_stay_light():
    code = (
        "import workbench\n"
        "workbench.GenerationConfig(max_new_tokens=4).to_json()\n"
        "workbench.GenerationBudget().describe()\n"
        "workbench.GenerationServingConfig().to_json()\n"
        "workbench.DecoderExportConfig().to_json()\n"
    )
    assert _heavy_modules_after(code) == []
