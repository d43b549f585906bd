"""The guided Workbench in JupyterLab 4 in a real browser, as a data scientist uses it.

JupyterLab serves a copy of notebooks/workbench.ipynb (its parameters injected after the parameters cell, as
papermill does); headless Chromium (Debian's, driven by Playwright) runs all cells, clicks the steps' Run
buttons, watches the progress bar, clicks Stop, reloads the page and runs the cell again. See
/work/shared/browser-tests.md for why the waits look the way they do (Lab ignores "Run All Cells" while the kernel
starts; its news toast; a notebook scrolls inside its own panel).

- test_every_step_with_defaults_on_minilm_ships_a_faster_candidate: the bundled MiniLM, every step with its defaults
  (the precision plan, the auto-fix of the candidate that misses the budget and the surgery plan included); the
  chosen candidate is INT8 (or else faster than the FP32 export) and meets the default budget; a progress bar
  with the elapsed time is visible during the benchmark; a Stop click during a long benchmark leaves it "stopped"
  with no partial file.
- test_a_reloaded_page_and_a_re_run_cell_find_the_finished_steps_done: three steps, a page reload, the cell run
  again: the three steps show as done, with their results.

Needs /usr/bin/chromium and the playwright and jupyterlab packages (`make browser-deps`); skips, saying which is
missing, where they are not installed. Screenshots go to test-artifacts/browser/ (gitignored); the finished
Workbench is copied to docs/screenshots/workbench-lab.png when that file is missing or UPDATE_SCREENSHOTS=1.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from tests.browser.test_browser import CHROMIUM, CHROMIUM_ARGS, INSTALL_HINT, _free_port, _local_only

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "workbench.ipynb"
ARTIFACTS = ROOT / "test-artifacts" / "browser"
README_SCREENSHOT = ROOT / "docs" / "screenshots" / "workbench-lab.png"
SERVER_START_S = 120
KERNEL_MS = 180_000
STEP_MS = 600_000  # a MiniLM step on a loaded 2-core machine; seconds on a quiet one
IDLE = re.compile(r"Python 3 \(ipykernel\) \| Idle")
# MiniLM kept small through the notebook's own parameters, so the whole click-through fits a CI job
MINILM = {
    "sequence_length": 32,
    "max_calibration_samples": 16,
    "max_eval_samples": 16,
    "benchmark_batch_sizes": [1, 8],
    "benchmark_iterations": 10,
}


def _requirements() -> None:
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is not installed: {INSTALL_HINT}")
    pytest.importorskip("playwright.sync_api", reason=f"playwright is not installed: {INSTALL_HINT}")
    pytest.importorskip("jupyterlab", reason="jupyterlab is not installed: pip install -e '.[dev]'")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tritonclient")


def _notebook_copy(folder: Path, name: str, parameters: dict[str, object]) -> Path:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    index = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    source = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    nbformat.write(notebook, path)
    return path


@contextlib.contextmanager
def _lab(root: Path, scratch: Path) -> Iterator[str]:
    """JupyterLab on 127.0.0.1 serving `root`, with its own config, data, runtime, settings and workspaces
    folders; yields its URL; always stops the server (its process group)."""
    port = _free_port()
    env = dict(os.environ)
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR"):
        env[name] = str(scratch / name.lower())
    # the system data folders stay on the path (the widget and plotly extensions live there)
    env["JUPYTER_PATH"] = str(Path(sys.prefix) / "share" / "jupyter")
    settings = scratch / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    log_path = scratch / "lab.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyterlab",
                "--no-browser",
                "--allow-root",
                "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.port={port}",
                "--ServerApp.port_retries=0",
                "--IdentityProvider.token=",
                f"--ServerApp.root_dir={root}",
                "--LabApp.news_url=None",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                "--LabApp.extension_manager=readonly",
                f"--LabApp.user_settings_dir={scratch / 'settings'}",
                f"--LabApp.workspaces_dir={scratch / 'workspaces'}",
            ],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if process.poll() is not None:
                raise AssertionError(f"JupyterLab exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"JupyterLab did not answer in {SERVER_START_S} s:\n{log_path.read_text()[-4000:]}"
                )
            time.sleep(0.3)
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


class LabPage:
    """The notebook open in Lab, and the Workbench's panels on it."""

    def __init__(self, page, url: str) -> None:
        self.page = page
        self.url = url

    def open(self) -> None:
        self.page.goto(self.url, timeout=KERNEL_MS, wait_until="domcontentloaded")
        self.wait_idle()

    def wait_idle(self) -> None:
        # Lab ignores "Run All Cells" while the kernel starts: wait for the status bar's Idle first
        self.page.locator(".jp-StatusBar-Widget", has_text=IDLE).first.wait_for(timeout=KERNEL_MS)

    def run_all_cells(self) -> None:
        self.page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        self.page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
        self.status("load").locator("[data-run]").wait_for(timeout=KERNEL_MS)

    def step(self, key: str):
        return self.page.locator(f".wb-step-{key}")

    def status(self, key: str):
        return self.step(key).locator(".wb-status")

    def start(self, key: str) -> int:
        """Click the step's Run; returns the number its run will carry when it ends."""
        from playwright.sync_api import expect

        button = self.step(key).locator("button.wb-run")
        button.scroll_into_view_if_needed()
        expect(button).to_be_enabled(timeout=STEP_MS)
        ended = self.status(key).locator("[data-run]")
        runs = int(ended.get_attribute("data-run")) if ended.count() else 0
        button.click()
        return runs + 1

    def finish(self, key: str, run: int, expect_text: str = "done in") -> str:
        self.status(key).locator(f'[data-run="{run}"]').wait_for(timeout=STEP_MS)
        text = self.status(key).inner_text()
        assert expect_text in text, (key, text, self.step(key).inner_text()[-3000:])
        return text

    def run(self, key: str, expect_text: str = "done in") -> str:
        return self.finish(key, self.start(key), expect_text)

    def set_control(self, key: str, label: str, value: str) -> None:
        step = self.step(key)
        settings = step.locator(".wb-settings")
        if settings.count() and not step.locator(".widget-text", has_text=label).first.is_visible():
            settings.get_by_text("settings").first.click()
        field = step.locator(".widget-text", has_text=label).first.locator("input")
        field.scroll_into_view_if_needed()
        field.fill(value)
        field.press("Enter")
        self.page.wait_for_timeout(300)  # the value reaches the kernel

    def screenshot(self, locator, path: Path) -> None:
        locator.scroll_into_view_if_needed()
        locator.screenshot(path=str(path))

    def whole_workbench(self, path: Path) -> None:
        """The Workbench from its header to its last panel: the viewport grows to hold it (Lab's notebook scrolls
        inside its own panel, so a full-page shot would show one screen)."""
        viewport = self.page.viewport_size
        height = int(self.page.locator(".wb-workbench").bounding_box()["height"]) + 600
        self.page.set_viewport_size({"width": viewport["width"], "height": min(max(height, 1000), 16000)})
        try:
            self.page.wait_for_timeout(800)
            self.screenshot(self.page.locator(".wb-workbench"), path)
        finally:
            self.page.set_viewport_size(viewport)


@contextlib.contextmanager
def _browser(url: str) -> Iterator[tuple[LabPage, list[str]]]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1100})
            context.route("**/*", _local_only)
            page = context.new_page()
            page.set_default_timeout(STEP_MS)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield LabPage(page, url), errors
        finally:
            browser.close()


def _partial_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".partial" in p.name]


def test_every_step_with_defaults_on_minilm_ships_a_faster_candidate(tmp_path):
    _requirements()
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    output_dir = tmp_path / "run"
    root = tmp_path / "lab-root"
    _notebook_copy(root, "workbench_minilm.ipynb", {"output_dir": str(output_dir), **MINILM})
    with _lab(root, tmp_path / "lab") as url, _browser(f"{url}/lab/tree/workbench_minilm.ipynb") as (lab, errors):
        lab.open()
        lab.run_all_cells()
        expect(lab.status("load")).to_contain_text("done in", timeout=KERNEL_MS)
        expect(lab.step("load")).to_contain_text("HFModelSource")
        for key in ("export", "fuse", "surgery", "quantize", "quantize_smoothquant", "convert", "compare"):
            lab.run(key)
        expect(lab.step("convert")).to_contain_text("int8_static")
        # a candidate misses the default budget: the accuracy panel names the fix and offers it in one click
        fix = lab.step("compare").locator("button.wb-fix").first
        expect(fix).to_be_visible()
        lab.screenshot(lab.step("compare"), ARTIFACTS / "lab-accuracy-fix.png")
        fixed = fix.inner_text().strip().removeprefix("Auto-fix ")
        ended = lab.status("autofix").locator("[data-run]")
        autofix_run = (int(ended.get_attribute("data-run")) if ended.count() else 0) + 1
        fix.click()
        lab.finish("autofix", autofix_run)
        expect(lab.step("autofix")).to_contain_text("Pareto front")
        expect(lab.status("compare")).to_contain_text("stale")  # the fixed candidate is not compared yet
        lab.screenshot(lab.step("autofix"), ARTIFACTS / "lab-autofix.png")
        lab.run("compare")

        # a long benchmark: its progress bar shows the elapsed time; Stop ends it cleanly
        lab.set_control("benchmark", "iterations", "400")
        run = lab.start("benchmark")
        progress = lab.step("benchmark").locator(".wb-progress-label")
        expect(progress).to_contain_text("elapsed", timeout=STEP_MS)
        expect(progress).to_contain_text("timing rounds", timeout=STEP_MS)
        expect(lab.step("benchmark").locator(".wb-progress-bar")).to_be_visible()
        lab.screenshot(lab.step("benchmark"), ARTIFACTS / "lab-benchmark-progress.png")
        stop = lab.step("benchmark").locator("button.wb-stop")
        expect(stop).to_be_visible()
        stop.click()
        stopped = lab.finish("benchmark", run, expect_text="stopped after")
        assert "nothing it was writing was kept" in stopped
        expect(lab.page.locator(".wb-overview")).to_contain_text("Benchmark stopped")
        lab.screenshot(lab.step("benchmark"), ARTIFACTS / "lab-benchmark-stopped.png")
        assert not _partial_files(output_dir)
        recipe = json.loads((output_dir / "recipe.json").read_text())
        assert "benchmark" not in [step["step"] for step in recipe["steps"]]

        # the benchmark with its defaults, then the choice, the deployment and the summary
        lab.set_control("benchmark", "iterations", str(MINILM["benchmark_iterations"]))
        lab.run("benchmark")
        for key in ("choose", "export_triton", "write_summary"):
            lab.run(key)
        overview = lab.page.locator(".wb-overview")
        for name in (
            "Load",
            "Export",
            "Precision",
            "SmoothQuant",
            "Precision plan",
            "Accuracy",
            "Auto-fix",
            "Benchmark",
            "Choice",
            "Deploy",
            "Summary",
        ):
            expect(overview).to_contain_text(f"{name} done")
        lab.whole_workbench(ARTIFACTS / "lab-workbench-done.png")
        assert not errors, errors

    summary = json.loads((output_dir / "summary.json").read_text())
    candidates = {c["name"]: c for c in summary["candidates"]}
    chosen = candidates[summary["chosen"]]
    assert chosen["meets_budget"], (summary["chosen"], chosen)
    assert summary["chosen"] != "fp32"
    int8 = "int8" in summary["chosen"]
    faster = chosen["latency_ms_p50"] < candidates["fp32"]["latency_ms_p50"]
    assert int8 or faster, (summary["chosen"], {n: c["latency_ms_p50"] for n, c in candidates.items()})
    assert f"{fixed}_autofix" in candidates  # the one-click fix made a candidate the later steps saw
    if not README_SCREENSHOT.is_file() or os.environ.get("UPDATE_SCREENSHOTS") == "1":
        README_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ARTIFACTS / "lab-workbench-done.png", README_SCREENSHOT)


def test_a_reloaded_page_and_a_re_run_cell_find_the_finished_steps_done(tiny_model_dir, tmp_path):
    _requirements()
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    output_dir = tmp_path / "run"
    root = tmp_path / "lab-root"
    _notebook_copy(
        root,
        "workbench_tiny.ipynb",
        {
            "model_path": str(tiny_model_dir("bert")),
            "output_dir": str(output_dir),
            "sequence_length": 16,
            "max_eval_samples": 8,
            "max_calibration_samples": 8,
            "benchmark_batch_sizes": [1],
            "benchmark_iterations": 2,
        },
    )
    with _lab(root, tmp_path / "lab") as url, _browser(f"{url}/lab/tree/workbench_tiny.ipynb") as (lab, errors):
        lab.open()
        lab.run_all_cells()
        for key in ("export", "fuse", "quantize"):
            lab.run(key)
        expect(lab.step("quantize")).to_contain_text("int8_dynamic")
        # the page reloads before Lab autosaved the outputs: the widgets are gone with them
        lab.page.reload(wait_until="domcontentloaded")
        lab.wait_idle()
        # the cell runs again (same kernel, a new Workbench): it re-attaches to its output folder
        lab.run_all_cells()
        expect(lab.page.locator(".wb-message")).to_contain_text("re-attached", timeout=KERNEL_MS)
        for key in ("export", "fuse", "quantize"):
            expect(lab.status(key)).to_contain_text("restored from disk")
        expect(lab.step("export")).to_contain_text("model.onnx")  # the results are shown, not only the states
        expect(lab.step("quantize")).to_contain_text("int8_dynamic")
        expect(lab.status("compare")).to_contain_text("not run")
        overview = lab.page.locator(".wb-overview")
        for name in ("Export", "Graph surgery", "Precision"):
            expect(overview).to_contain_text(f"{name} done")
        lab.whole_workbench(ARTIFACTS / "lab-reattached.png")
        # and the run goes on from there
        lab.run("compare")
        assert not errors, errors
    from workbench.recipe import Recipe

    assert Recipe.load(output_dir).step_names == ("export", "fuse", "quantize", "compare")
