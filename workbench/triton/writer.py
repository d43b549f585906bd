"""Writing into a Triton repository: the one render-and-check of a config, and the one atomic writer.

:func:`checked_text` renders a ModelConfig to config.pbtxt text and parses it back strictly (so what is written
says exactly what was derived); :func:`write_entries` writes top-level entries (model folders, files) of a
repository all or nothing. Every Triton export goes through both.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.errors import TritonExportError, WorkbenchError
from workbench.triton.config import parse_model_config, render_model_config


def checked_text(cfg: Any) -> str:
    """config.pbtxt text of `cfg`, parsed back strictly with Triton's schema and compared with `cfg`."""
    text = render_model_config(cfg)
    if parse_model_config(text) != cfg:  # never expected: the text must say exactly what was derived
        raise TritonExportError(
            f"The rendered Triton config of {cfg.name!r} does not parse back to the config it was rendered from.",
            fix="report this as a workbench bug, with the model and the TritonConfig",
        )
    return text


@dataclass(frozen=True)
class Entry:
    """One top-level entry of the repository being written: a model folder or a file."""

    name: str
    populate: Callable[[Path], None]  # writes the entry at the path it is given


def write_entries(repository: Path, entries: list[Entry], *, overwrite: bool) -> None:
    """Write several top-level entries of `repository` all or nothing.

    Everything is built in one hidden staging folder inside the repository first; only when all of it is
    complete are the entries renamed into place (existing ones, with overwrite, moved aside first). A failure
    while moving puts back what was there before.
    """
    from workbench._files import FOLDER_MODE, _tag, clean_leftovers, disk_errors

    clean_leftovers(repository)  # a killed export's staging folder; its moved-aside entries are put back
    with disk_errors(repository, "Writing the Triton repository"):
        staging = Path(tempfile.mkdtemp(prefix=f".workbench-export{_tag()}", suffix=".partial", dir=repository))
        aside: Path | None = Path(tempfile.mkdtemp(prefix=f".workbench-export{_tag()}", suffix=".old", dir=repository))
    placed: list[tuple[Path, Path | None, bool]] = []  # (target, its old version moved aside, new one placed)
    try:
        with disk_errors(repository, "Writing the Triton repository"):
            for entry in entries:
                entry.populate(staging / entry.name)
                if (staging / entry.name).is_dir():
                    os.chmod(staging / entry.name, FOLDER_MODE)
        for entry in entries:
            target = repository / entry.name
            old = None
            if target.exists() or target.is_symlink():
                if not overwrite:  # appeared after the check at the start: never merge into it
                    raise FileExistsError(f"{target} appeared while the export was running")
                old = aside / entry.name  # type: ignore[operator]
                os.replace(target, old)
            placed.append((target, old, False))
            os.rename(staging / entry.name, target)
            placed[-1] = (target, old, True)
    except BaseException as exc:
        restored = True
        for target, old, is_new in reversed(placed):
            try:
                if is_new:
                    if target.is_dir() and not target.is_symlink():
                        shutil.rmtree(target)
                    else:
                        target.unlink(missing_ok=True)
                if old is not None:
                    os.replace(old, target)
            except OSError:
                restored = False
        if not restored:  # never delete the only copy of what was there before
            aside = None
            raise TritonExportError(
                f"Writing into {repository} failed ({exc}) and putting the previous entries back failed too.",
                fix=f"the previous entries are in the hidden .workbench-export.*.old folder in {repository}: move "
                "them back by hand",
            ) from exc
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)


def write_repository(repository: Path, entries: list[Entry], *, overwrite: bool, what: str, fix: str) -> None:
    """`write_entries` into `repository`, creating it if missing: the one way every Triton export writes.

    A failure removes the repository again if this call created it (and it is still empty); an OSError that is not
    already a WorkbenchError becomes a TritonExportError "Writing <what> failed: ..." with `fix`.
    """
    created = not repository.exists()
    try:
        repository.mkdir(parents=True, exist_ok=True)
        write_entries(repository, entries, overwrite=overwrite)
    except BaseException as exc:
        remove_if_empty(repository, created)
        if isinstance(exc, OSError) and not isinstance(exc, WorkbenchError):
            raise TritonExportError(f"Writing {what} failed: {exc}. Nothing was moved into place.", fix=fix) from exc
        raise


def remove_if_empty(folder: Path, created: bool) -> None:
    """Remove `folder` if this call `created` it and nothing is in it (a failed export leaves no empty folder)."""
    if created:
        try:
            folder.rmdir()
        except OSError:
            pass
