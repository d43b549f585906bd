"""Writing model folders into a Triton repository: every folder is complete or absent."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from workbench.errors import TritonExportError

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    pass



@dataclass(frozen=True)
class _Entry:
    """One top-level entry of the repository being written: a model folder or a file."""

    name: str
    populate: Callable[[Path], None]  # writes the entry at the path it is given


def _write_repository_entries(repository: Path, entries: list[_Entry], *, overwrite: bool) -> None:
    """Write several top-level entries of `repository` all or nothing.

    Everything is built in one hidden staging folder inside the repository first; only when all of it is
    complete are the entries renamed into place (existing ones, with overwrite, moved aside first). A failure
    while moving puts back what was there before.
    """
    from workbench._files import FOLDER_MODE, _tag, clean_leftovers, disk_errors

    clean_leftovers(repository)  # a killed export's staging folder; its moved-aside entries are put back
    with disk_errors(repository, "Writing the Triton repository"):
        staging = Path(tempfile.mkdtemp(prefix=f".workbench-export{_tag()}", suffix=".partial", dir=repository))
        aside: Path | None = Path(tempfile.mkdtemp(prefix=f".workbench-export{_tag()}", suffix=".old",
                                                   dir=repository))
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
