"""Write files so that a failed or killed step leaves nothing half-written behind, and nothing outside its folder.

- :func:`atomic_path` / :func:`atomic_directory`: build a file or folder under a hidden temporary name beside its
  destination and rename it into place only when it is complete, readable by other users (0644 / 0755, not the
  0600 / 0700 of mkstemp / mkdtemp: a Triton server often runs as another user).
- :func:`staging_directory`: a private, hidden working folder inside the folder a step writes to, removed
  afterwards; what onnxruntime's tools write next to their inputs goes there too.
- :func:`clean_leftovers`: the hidden ``.*.partial`` / ``.*.old`` entries a killed run left behind are removed by
  the next run into the same folder. Their names carry the writing process's id (``.wb<pid>.``), so a live
  process's work in progress is never removed.
- :class:`OutputFolder`: one run per output folder. ``claim(overwrite=...)`` takes a lock file (an flock, so a
  killed run never blocks the next one), refuses with :class:`~workbench.errors.OutputFolderBusy` naming the
  other run, refuses up front when the folder holds an earlier run and ``overwrite`` is False, removes the
  earlier run's ``summary.json`` when ``overwrite`` is True (so it never describes other models), and cleans
  leftovers.
- :func:`disk_errors`: a full disk becomes :class:`~workbench.errors.DiskFullError`, a read-only folder
  :class:`~workbench.errors.OutputFolderError`, whatever library was writing.
- :func:`file_sha256` / :func:`text_sha256`: the one file (and text) digest.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from workbench.errors import DiskFullError, OutputFolderBusy, OutputFolderError

FILE_MODE = 0o644
FOLDER_MODE = 0o755
LOCK_FILE = ".workbench.lock"
LEFTOVER_SUFFIXES = (".partial", ".old")
#: What a finished run leaves in its output folder; a folder holding any of these holds an earlier run.
RUN_PRODUCTS = ("summary.json", "recipe.json", "triton_repository")
_TAG = re.compile(r"\.wb(\d+)\.")
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)
_LOCK_RETRIES = 5


def _tag() -> str:
    """The part of a temporary name that says which process owns it."""
    return f".wb{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def is_leftover(name: str) -> bool:
    """Whether an entry name is one of the workbench's hidden temporary names."""
    return name.startswith(".") and name.endswith(LEFTOVER_SUFFIXES)


def clean_leftovers(folder: str | os.PathLike[str], *, all_owners: bool = False) -> list[Path]:
    """Remove the hidden temporary entries (``.*.partial``, ``.*.old``) that killed runs left in `folder`.

    Args:
        folder: The folder (not recursive: every step stages in the folder it writes to).
        all_owners: Also remove entries of live processes and entries without an owner tag (only the holder of
            the folder's OutputFolder lock may do this).

    Returns:
        What was removed.
    """
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return removed
    for entry in entries:
        if not is_leftover(entry.name):
            continue
        match = _TAG.search(entry.name)
        if not all_owners:
            if match is None or int(match.group(1)) == os.getpid() or _alive(int(match.group(1))):
                continue
        elif match is not None and int(match.group(1)) == os.getpid():
            continue  # this process's own work in progress
        path = Path(entry.path)
        with contextlib.suppress(OSError):
            if entry.name.endswith(".old") and entry.is_dir(follow_symlinks=False):
                _restore_aside(path)
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return removed


def _restore_aside(path: Path) -> None:
    """Put back what a killed run had moved aside (``.old``) and not yet replaced: it may be the only copy."""
    folder = path.parent
    if path.name.startswith(".workbench-export"):  # the Triton writer: entries of the repository, moved aside
        for child in path.iterdir():
            if not (folder / child.name).exists():
                os.replace(child, folder / child.name)
        return
    name = path.name[1:]
    match = _TAG.search(name)
    destination = folder / (name[: match.start()] if match else name.split(".")[0])
    if not destination.exists():  # atomic_directory: the whole old destination
        os.replace(path, destination)
        path.mkdir()  # an empty stand-in, removed by the caller


def is_disk_full(exc: BaseException, where: str | os.PathLike[str] | None = None, needed: int = 0) -> bool:
    """Whether `exc`, or an exception it was raised from, says the disk or quota is full.

    With `where`, also when the disk holding it has less than `needed` bytes (at least 1 MB) free: libraries
    that write from C++ (onnx's shape inference inside onnxruntime's quantizer) may leave a truncated file
    without an error, and what fails is the next read of it.
    """
    if where is not None:
        with contextlib.suppress(OSError, StopIteration):
            folder = Path(where)
            free = shutil.disk_usage(next(p for p in (folder, *folder.parents) if p.exists())).free
            if free < max(needed, 1 << 20):
                return True
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 20:
        if isinstance(current, OSError) and current.errno in _DISK_FULL_ERRNOS:
            return True
        if "No space left on device" in str(current) or "Disk quota exceeded" in str(current):
            return True
        current = current.__cause__ or current.__context__
        seen += 1
    return False


def _free_space(folder: Path) -> str:
    with contextlib.suppress(OSError):
        usage = shutil.disk_usage(next(p for p in (folder, *folder.parents) if p.exists()))
        return f"{usage.free / 1e6:.1f} MB free of {usage.total / 1e9:.1f} GB"
    return "free space unknown"


def disk_full_error(exc: BaseException, where: str | os.PathLike[str], what: str = "Writing") -> DiskFullError:
    """The DiskFullError for `exc` raised while writing to `where`."""
    where = Path(where)
    said = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
    return DiskFullError(
        f"{what} {where} failed: the disk is full ({_free_space(where)}; the library said {said}). Nothing was "
        "moved into place.",
        expected="room for the step's files (a transformer model is about its parameter count x 4 bytes per copy)",
        fix=f"free space on the disk that holds {where.parent if where.suffix else where}, or write to another "
        "folder; then run the step again (its partial files are removed)",
    )


@contextlib.contextmanager
def disk_errors(where: str | os.PathLike[str], what: str = "Writing") -> Iterator[None]:
    """Turn a full disk into DiskFullError and a read-only destination into OutputFolderError."""
    try:
        yield
    except (DiskFullError, OutputFolderError):
        raise
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(exc, where, what) from exc
        if exc.errno in _READ_ONLY_ERRNOS:
            raise OutputFolderError(
                f"{what} {where} failed: {exc.strerror or exc} ({Path(exc.filename or where)}).",
                expected="a folder this user may write to",
                fix="choose a writable output folder, or fix its permissions (chmod u+w) or mount",
            ) from exc
        raise


def _chmod(path: Path, mode: int) -> None:
    with contextlib.suppress(OSError):  # a filesystem without modes (FAT, some mounts) keeps what it has
        os.chmod(path, mode)


def ensure_folder(folder: str | os.PathLike[str], *, what: str = "Output folder") -> Path:
    """Create `folder` (and its parents) or raise OutputFolderError saying why it cannot be one."""
    folder = Path(folder)
    blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise OutputFolderError(
            f"{what} {folder} cannot be created: {blocking} is a file, not a folder.",
            fix="choose another path, or move the file away",
        )
    with disk_errors(folder, "Creating"):
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def check_output_file(path: str | os.PathLike[str], *, what: str = "Output") -> Path:
    """Raise OutputFolderError now, before any work, if a file cannot be written at `path`.

    `path` must not be a folder; no parent may be a file; the nearest existing parent must be writable and not
    on a read-only file system.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputFolderError(
            f"{what} {path} is a folder, not a file path.",
            fix="pass the path of a file inside it, for example model.onnx",
        )
    parent = path.parent
    blocking = next((p for p in (parent, *parent.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise OutputFolderError(
            f"{what} {path} cannot be written: {blocking} is a file, not a folder.",
            fix="choose another output path, or move the file away",
        )
    existing = next(p for p in (parent, *parent.parents) if p.exists())
    read_only = False
    with contextlib.suppress(OSError, AttributeError):
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
    if read_only or not os.access(existing, os.W_OK | os.X_OK):
        raise OutputFolderError(
            f"{what} {path} cannot be written: {existing} is "
            f"{'on a read-only file system' if read_only else 'read-only'}.",
            expected="an output path in a folder this user may write to",
            fix="choose a writable output folder (inputs may stay where they are: stages never write beside them)",
        )
    return path


@contextlib.contextmanager
def staging_directory(parent: str | os.PathLike[str], name: str = "stage") -> Iterator[Path]:
    """A private, hidden folder inside `parent` for a step's temporary files, removed when the block ends.

    It is named ``.<name>.wb<pid>.XXXX.partial``, so if the process is killed the next run into `parent`
    removes it (:func:`clean_leftovers`). Dead processes' leftovers in `parent` are removed first.
    """
    parent = ensure_folder(parent)
    clean_leftovers(parent)
    with disk_errors(parent, "Creating a temporary folder in"):
        folder = Path(tempfile.mkdtemp(prefix=f".{name}{_tag()}", suffix=".partial", dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def link_or_copy(source: str | os.PathLike[str], destination: str | os.PathLike[str]) -> Path:
    """Make `destination` show `source`'s content without copying where possible (hard link, else symlink)."""
    source, destination = Path(source).resolve(), Path(destination)
    for make in (os.link, os.symlink):
        try:
            make(source, destination)
            return destination
        except OSError:
            continue
    shutil.copyfile(source, destination)
    return destination


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `destination`; move it into place only if the block succeeds.

    The temporary file lives in the destination's folder so the final rename is atomic. On any exception the
    temporary file is removed and the destination is left as it was. The file is readable by everyone (0644).
    """
    destination = Path(destination)
    parent = ensure_folder(destination.parent)
    clean_leftovers(parent)
    with disk_errors(destination):
        fd, tmp_name = tempfile.mkstemp(prefix=f".{destination.name}{_tag()}", suffix=".partial", dir=parent)
        os.close(fd)
    tmp = Path(tmp_name)
    try:
        with disk_errors(destination):
            yield tmp
            if tmp.exists():
                _chmod(tmp, FILE_MODE)
            os.replace(tmp, destination)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(destination: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `destination`; it becomes `destination` only if the block succeeds.

    With `overwrite`, an existing destination is replaced only after the new folder is complete. The folder is
    readable by everyone (0755).
    """
    destination = Path(destination)
    parent = ensure_folder(destination.parent)
    clean_leftovers(parent)
    with disk_errors(destination):
        tmp = Path(tempfile.mkdtemp(prefix=f".{destination.name}{_tag()}", suffix=".partial", dir=parent))
    try:
        with disk_errors(destination):
            yield tmp
            _chmod(tmp, FOLDER_MODE)
            if destination.exists() and overwrite:
                old = Path(tempfile.mkdtemp(prefix=f".{destination.name}{_tag()}", suffix=".old", dir=parent))
                old.rmdir()
                os.replace(destination, old)
                os.replace(tmp, destination)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, destination)  # fails if destination appeared meanwhile: never merge into it
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's bytes, hex (read in 1 MiB blocks): the one file hash of the workbench."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def text_sha256(text: str | bytes) -> str:
    """The sha256 of a string's UTF-8 bytes (or of bytes), hex."""
    return hashlib.sha256(text.encode("utf-8") if isinstance(text, str) else text).hexdigest()


# --------------------------------------------------------------------------------------------------------------
# One run per output folder

#: Output folders this process holds, by resolved path. An flock belongs to an open file, so a second claim of
#: the same folder in the same process (a notebook re-running its cells) must take over the first one.
_HELD: dict[str, OutputFolder] = {}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _read_lock(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}


def _describe_run(info: dict[str, Any]) -> str:
    if not info:
        return "another run"
    command = " ".join(info.get("command", []))[:200]
    return f"process {info.get('pid', '?')} on {info.get('host', '?')}, started {info.get('started', '?')}" + (
        f" ({command})" if command else ""
    )


class OutputFolder:
    """An output folder that one run at a time writes to.

    Args:
        path: The folder; created by :meth:`claim` if missing.

    Attributes:
        path: The folder.
        previous_run: After a claim: the lock record of an earlier run that was killed before it finished (its
            process id, host and start time), or None.
        cleaned: After a claim: the leftovers it removed.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.previous_run: dict[str, Any] | None = None
        self.cleaned: list[Path] = []
        self._fd: int | None = None
        self._finalizer: Any = None

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_FILE

    @property
    def held(self) -> bool:
        return self._fd is not None

    def earlier_run(self) -> list[str]:
        """What in the folder belongs to an earlier run: summary.json, recipe.json, the Triton repository and
        ONNX models at the top level."""
        if not self.path.is_dir():
            return []
        found = [name for name in RUN_PRODUCTS if (self.path / name).exists()]
        found += sorted(p.name for p in self.path.glob("*.onnx"))
        return found

    def claim(self, *, overwrite: bool = False) -> OutputFolder:
        """Take the folder for this run, before anything is written.

        Raises:
            OutputFolderError: The path (or a parent) is a file, the folder is read-only, or it holds an earlier
                run and `overwrite` is False.
            OutputFolderBusy: Another live run holds the folder.
        """
        if not isinstance(overwrite, bool):
            from workbench.errors import ConfigError

            raise ConfigError(f"overwrite must be True or False, got {overwrite!r} ({type(overwrite).__name__}).")
        key = str(self.path.resolve())
        earlier_claim = _HELD.get(key)
        if earlier_claim is not None and earlier_claim is not self:
            earlier_claim.release()  # this process re-claims its own folder: the new claim takes over
        ensure_folder(self.path)
        self._lock()
        try:
            products = self.earlier_run()
            if products and not overwrite and earlier_claim is None:
                killed = (
                    (
                        " An earlier run (" + _describe_run(self.previous_run) + ") was killed before it "
                        "finished, so these files may be incomplete."
                    )
                    if self.previous_run
                    else ""
                )
                raise OutputFolderError(
                    f"Output folder {self.path} holds an earlier run ({', '.join(products[:6])}"
                    f"{' ...' if len(products) > 6 else ''}); nothing was changed.{killed}",
                    expected="an empty or new output folder, or overwrite=True",
                    fix="pass overwrite=True to replace the earlier run, or choose another output folder",
                )
            if overwrite or self.previous_run:
                # the earlier run's summary would describe models this run is about to replace
                with disk_errors(self.path, "Cleaning"):
                    (self.path / "summary.json").unlink(missing_ok=True)
            self.cleaned = clean_leftovers(self.path, all_owners=True)
        except BaseException:
            self._abandon()
            raise
        _HELD[key] = self
        return self

    def _abandon(self) -> None:
        """Give up a claim that was refused: the folder is left exactly as it was, lock file included."""
        if self._fd is None:
            return
        if self.previous_run:  # a killed run's record: keep it, so the next claim still says what happened
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
                os.pwrite(self._fd, (json.dumps(self.previous_run) + "\n").encode(), 0)
            if self._finalizer is not None:
                self._finalizer.detach()
                self._finalizer = None
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
            return
        self.release()

    def _lock(self) -> None:
        import fcntl

        for _ in range(_LOCK_RETRIES):
            with disk_errors(self.path, "Locking"):
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                info = _read_lock(self.lock_path)
                os.close(fd)
                raise OutputFolderBusy(
                    f"Output folder {self.path} is in use by {_describe_run(info)}.",
                    expected="one run at a time per output folder",
                    fix="wait for that run to finish (or stop it), or choose another output folder",
                ) from None
            try:  # the holder may have removed the file between our open and our lock: lock the current one
                same = os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            previous = _read_lock(self.lock_path)
            self.previous_run = previous or None
            record = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": _now(),
                "command": [os.path.basename(sys.argv[0]) if sys.argv else "python", *sys.argv[1:4]],
            }
            try:
                with disk_errors(self.lock_path):
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            self._finalizer = weakref.finalize(self, _unlock, fd, str(self.lock_path))
            return
        raise OutputFolderBusy(
            f"Output folder {self.path}'s lock file keeps changing; another run is starting.",
            fix="wait for it, or choose another output folder",
        )

    def release(self) -> None:
        """Give the folder up (remove the lock file); safe to call twice."""
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self._fd = None
        key = str(self.path.resolve())
        if _HELD.get(key) is self:
            del _HELD[key]

    def __enter__(self) -> OutputFolder:  # noqa: PYI034 - the class is not meant to be subclassed
        return self if self.held else self.claim()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _unlock(fd: int, lock_path: str) -> None:
    with contextlib.suppress(OSError):
        if os.fstat(fd).st_ino == os.stat(lock_path).st_ino:
            os.unlink(lock_path)  # while still locked, so nobody locks the file being removed
    with contextlib.suppress(OSError):
        os.close(fd)
