"""The Workbench in a real browser: Voilà serves a copy of notebooks/workbench.ipynb on the tiny BERT, headless
Chromium (Debian's, driven by Playwright) clicks the steps' Run buttons and reads what the page shows.

Needs /usr/bin/chromium and the playwright and voila packages (`make browser-deps`); skips, saying which is missing,
where they are not installed. Screenshots go to test-artifacts/browser/ (gitignored); the finished page is also
copied to docs/screenshots/workbench.png (the top of the page: the overview and the first steps) when that file is
missing or UPDATE_SCREENSHOTS=1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import nbformat
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "workbench.ipynb"
ARTIFACTS = ROOT / "test-artifacts" / "browser"
README_SCREENSHOT = ROOT / "docs" / "screenshots" / "workbench.png"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-dev-shm-usage"]
SERVER_START_S = 90
RENDER_MS = 120_000
STEP_MS = 120_000  # one step on the tiny model takes seconds; the bound is for a loaded machine
INSTALL_HINT = "run `make browser-deps` (apt-get install chromium; pip install playwright voila)"


def _requirements() -> None:
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is not installed: {INSTALL_HINT}")
    pytest.importorskip("playwright.sync_api", reason=f"playwright is not installed: {INSTALL_HINT}")
    pytest.importorskip("voila", reason=f"voila is not installed: {INSTALL_HINT}")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tritonclient")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _notebook_copy(folder: Path, parameters: dict[str, object]) -> Path:
    """notebooks/workbench.ipynb with a cell setting `parameters` after its parameters cell (as papermill does)."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    index = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    source = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    notebook.cells.insert(index + 1, cell)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "workbench_tiny.ipynb"
    nbformat.write(notebook, path)
    return path


@contextlib.contextmanager
def _voila(notebook: Path, scratch: Path) -> Iterator[str]:
    """Serve `notebook` with Voilà on 127.0.0.1; yields its URL; always stops the server (its process group)."""
    port = _free_port()
    env = dict(os.environ)
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR"):
        env[name] = str(scratch / name.lower())
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    log_path = scratch / "voila.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "voila",
                notebook.name,
                "--no-browser",
                "--Voila.ip=127.0.0.1",
                f"--Voila.port={port}",
                "--Voila.port_retries=0",
                "--show_tracebacks=True",
            ],
            cwd=notebook.parent,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:  # ready: any HTTP answer on a made-up path (GET / would run the notebook)
            if process.poll() is not None:
                raise AssertionError(f"Voilà exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ready-check", timeout=2)
                break
            except urllib.error.HTTPError:
                break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"Voilà did not answer in {SERVER_START_S} s:\n{log_path.read_text()[-4000:]}"
                    ) from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


def _local_only(route) -> None:
    """Let requests to 127.0.0.1 through; abort the rest at once (Voilà's icon font, CDNs)."""
    if urlparse(route.request.url).hostname == "127.0.0.1":
        route.continue_()
    else:
        route.abort()


def _screenshot(page, path: Path, *, whole: bool = True) -> None:
    """Save a screenshot of the page down to the workbench's end, or of the workbench's first 1400 pixels
    (whole=False). Voilà scrolls inside a container, so full_page=True would show one screen's worth: the viewport
    grows to fit everything for the shot, then the shot is clipped to the workbench."""
    viewport = page.viewport_size
    page.set_viewport_size({"width": viewport["width"], "height": 16000})
    try:
        page.wait_for_timeout(300)  # let the layout settle at the new size
        box = page.locator(".wb-workbench").bounding_box()
        top = 0 if whole else max(box["y"] - 8, 0)
        bottom = box["y"] + box["height"] + 16 if whole else top + min(box["height"] + 16, 1400)
        page.screenshot(path=str(path), clip={"x": 0, "y": top, "width": viewport["width"], "height": bottom - top})
    finally:
        page.set_viewport_size(viewport)


def test_the_workbench_runs_its_steps_in_a_real_browser(tiny_model_dir, tmp_path):
    _requirements()
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    output_dir = tmp_path / "run"
    notebook = _notebook_copy(
        tmp_path / "notebook",
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

    def step(page, key: str):
        return page.locator(f".wb-step-{key}")

    def status(page, key: str):
        return step(page, key).locator(".wb-status")

    def run(page, key: str, *, expect_text: str = "done in") -> None:
        """Click the step's Run and wait for the end of that run (its status carries the run's number)."""
        button = step(page, key).locator("button.wb-run")
        expect(button).to_be_enabled(timeout=STEP_MS)
        ended = status(page, key).locator("[data-run]")
        runs = int(ended.get_attribute("data-run")) if ended.count() else 0
        button.click()
        status(page, key).locator(f'[data-run="{runs + 1}"]').wait_for(timeout=STEP_MS)
        text = status(page, key).inner_text()
        assert expect_text in text, (key, text, step(page, key).inner_text()[-2000:])

    with _voila(notebook, tmp_path) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1000})
            context.route("**/*", _local_only)
            page = context.new_page()
            page.set_default_timeout(STEP_MS)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url, timeout=RENDER_MS, wait_until="domcontentloaded")

            # the notebook ran: the workbench is on the page, loaded, with only Export runnable
            expect(status(page, "load")).to_contain_text("done in", timeout=RENDER_MS)
            expect(page.locator(".wb-overview")).to_contain_text("Export not run")
            expect(step(page, "export").locator("button.wb-run")).to_be_enabled()
            expect(step(page, "quantize").locator("button.wb-run")).to_be_disabled()
            expect(step(page, "quantize")).to_contain_text("needs: Export to ONNX")
            _screenshot(page, ARTIFACTS / "workbench-loaded.png")

            run(page, "export")
            expect(step(page, "quantize").locator("button.wb-run")).to_be_enabled()
            run(page, "quantize")
            expect(step(page, "quantize")).to_contain_text("int8")

            # a budget the library rejects: the error shows in the accuracy panel; fixed, it runs
            step(page, "compare").get_by_text("settings").click()  # the controls fold under "settings"
            budget = step(page, "compare").locator("input").first
            expect(budget).to_be_visible()
            budget.fill("2")
            budget.press("Enter")
            run(page, "compare", expect_text="failed: ConfigError")
            expect(step(page, "compare")).to_contain_text("must be in [-1.0, 1.0], got 2.0")
            step(page, "compare").screenshot(path=str(ARTIFACTS / "workbench-accuracy-failed.png"))
            expect(status(page, "quantize")).to_contain_text("done in")  # earlier results stand
            budget.fill("0.995")
            budget.press("Enter")
            run(page, "compare")

            run(page, "benchmark")
            run(page, "choose")
            run(page, "export_triton")
            run(page, "write_summary")
            expect(step(page, "write_summary")).to_contain_text("chosen:")
            overview = page.locator(".wb-overview")
            for name in ("Load", "Export", "Precision", "Accuracy", "Benchmark", "Choice", "Deploy", "Summary"):
                expect(overview).to_contain_text(f"{name} done")
            expect(overview).to_contain_text("Graph surgery not run")
            _screenshot(page, ARTIFACTS / "workbench-done.png")
            _screenshot(page, ARTIFACTS / "workbench-done-top.png", whole=False)

            # re-running export marks what read it stale, on the page
            run(page, "export")
            expect(status(page, "quantize")).to_contain_text("stale")
            expect(status(page, "export_triton")).to_contain_text("stale")
            _screenshot(page, ARTIFACTS / "workbench-stale.png")
            assert not errors, errors
        finally:
            browser.close()

    # what the clicks did, on disk: the files and the recipe the workbench keeps
    assert (output_dir / "model.onnx").is_file() and (output_dir / "summary.json").is_file()
    assert any((output_dir / "triton_repository").iterdir())
    from workbench.recipe import Recipe

    assert Recipe.load(output_dir).step_names == (
        "export",
        "quantize",
        "compare",
        "benchmark",
        "choose",
        "export_triton",
        "write_summary",
        "export",
    )
    if not README_SCREENSHOT.is_file() or os.environ.get("UPDATE_SCREENSHOTS") == "1":
        README_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ARTIFACTS / "workbench-done-top.png", README_SCREENSHOT)
