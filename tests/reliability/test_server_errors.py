"""The server wrapper names what is wrong with a repository instead of Triton's "models not available"."""

from __future__ import annotations

import importlib.util
import shutil

import pytest

pytest.importorskip("tritonclient.http", reason="tritonclient is not installed (the [triton] extra)")
if importlib.util.find_spec("pytriton") is None:
    pytest.skip("nvidia-pytriton is not installed (the [triton] extra)", allow_module_level=True)

from workbench.errors import TritonServerError
from workbench.triton.server import TritonServer

pytestmark = [pytest.mark.slow, pytest.mark.reliability]


def test_a_config_that_does_not_parse_is_named_with_its_line(tiny_ensemble, tmp_path):
    repository = tmp_path / "repo"
    shutil.copytree(tiny_ensemble.repository, repository)
    config = repository / "tiny" / "config.pbtxt"
    config.write_text(config.read_text().replace("max_batch_size", "max_batch_sise", 1))
    with TritonServer(repository) as server:
        for name, words in (("tiny", "'tiny'"), ("tiny_ensemble", "a step of ensemble 'tiny_ensemble'")):
            with pytest.raises(TritonServerError) as info:
                server.load(name)
            message = str(info.value)
            assert words in message and str(config) in message and "max_batch_sise" in message
            assert "line " in message and "not available" not in message
        server.load("tiny_tokenizer")  # the other models still load
        assert server.running


def test_a_config_that_is_not_text_is_named(tiny_ensemble, tmp_path):
    repository = tmp_path / "repo"
    shutil.copytree(tiny_ensemble.repository, repository)
    (repository / "tiny_pooling" / "config.pbtxt").write_bytes(b"\xff\xfe\x00garbage")
    with TritonServer(repository) as server, pytest.raises(TritonServerError, match="not UTF-8"):
        server.load("tiny_pooling")
