"""The one atomic writer of the project: every file or folder it writes appears complete or
not at all.

Data goes to a temporary file (or folder) in the target's own folder, flushed to the disk
and renamed onto the target only when writing succeeded; on any error the temporary is
removed, so a crash, a kill or a full disk never leaves a half-written output, and an
existing target stays as it was. A write that fails because the disk is full is reported as
such (:class:`DiskFullError`: the folder, the bytes needed and free), whatever the writing
library said. Pure Python (``soma.peft`` uses it too).
"""
import contextlib
import errno
import os
import os.path as osp
import shutil
import tempfile
from typing import Iterable, Iterator, Optional

__all__ = ['atomic_output', 'atomic_output_dir', 'DiskFullError', 'human_bytes',
           'first_missing_dir', 'remove_empty_dirs']

_DISK_FULL = (errno.ENOSPC, getattr(errno, 'EDQUOT', errno.ENOSPC))
# what a writer still needs when it failed with an unknown size: a disk with less than this
# free is full for it
_MIN_FREE = 1 << 20


class DiskFullError(OSError):
    """Writing a file failed because its disk is full; the message says where and how much
    (``errno`` is ``ENOSPC``; ``str()`` is the message alone, ready for one line)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.errno = errno.ENOSPC


def human_bytes(n: float) -> str:
    """``n`` bytes as a short human-readable size (``512 B``, ``3.2 MB``, ``1.5 GB``)."""
    for unit in ('B', 'kB', 'MB', 'GB', 'TB'):
        if abs(n) < 1000 or unit == 'TB':
            return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.1f} {unit}'
        n /= 1000.0
    return f'{n:.1f} TB'


def _disk_full(error: BaseException, folder: str, needed: Optional[int], path: str
               ) -> Optional[DiskFullError]:
    """A :class:`DiskFullError` when ``error`` (from any writer: ``ENOSPC``, torch's zip
    writer, safetensors) happened on a full disk, else None."""
    if isinstance(error, DiskFullError):
        return error
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    full = (isinstance(error, OSError) and error.errno in _DISK_FULL) or (
        isinstance(error, Exception) and free < max(needed or 0, _MIN_FREE))
    if not full:
        return None
    need = f'about {human_bytes(needed)}' if needed else 'more space'
    return DiskFullError(f'disk full: writing {path} needs {need} in {folder}, '
                         f'{human_bytes(free)} free; nothing was written')


def _fsync(path: str) -> None:
    """Flush ``path``'s data to the disk (a kill cannot lose it, a power cut neither)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _default_mode(full: int) -> int:
    """``full`` (0o666 for a file, 0o777 for a folder) less the umask, as ``open`` /
    ``mkdir`` would create it (mkstemp / mkdtemp create 0600 / 0700)."""
    umask = os.umask(0)
    os.umask(umask)
    return full & ~umask


@contextlib.contextmanager
def atomic_output(path, needed_bytes: Optional[int] = None, suffix: str = '') -> Iterator[str]:
    """Yield a temporary path next to ``path``; flush it and rename it onto ``path`` on
    success. ``needed_bytes`` (the expected size, when known) goes into the message of a
    :class:`DiskFullError` raised when the write fails on a full disk; ``suffix`` ends the
    temporary name (for writers that pick the format by extension, e.g. ``'.mp4'``)."""
    path = os.fspath(path)
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{osp.basename(path)}.', suffix=f'.tmp{suffix}',
                               dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _default_mode(0o666))
        _fsync(tmp)
        os.replace(tmp, path)
    except Exception as e:
        full = _disk_full(e, folder, needed_bytes, path)
        if full is None:
            raise
        raise full from None
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_output_dir(path, replaceable: Iterable[str] = (),
                      needed_bytes: Optional[int] = None) -> Iterator[str]:
    """Yield a temporary folder next to ``path``; on success it becomes ``path``.

    ``path`` may be missing, an empty folder, or a folder holding only files named in
    ``replaceable`` (an earlier output of the same writer), which is then replaced as a
    whole; anything else is refused with ``FileExistsError`` before anything is written.
    A write that fails on a full disk is a :class:`DiskFullError`.
    """
    path = os.fspath(path)
    if osp.exists(path) and (not osp.isdir(path)
                             or not set(os.listdir(path)) <= set(replaceable)):
        raise FileExistsError(f'{path} exists and is not an empty folder')
    parent = osp.dirname(osp.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f'.{osp.basename(osp.abspath(path))}.', suffix='.tmp',
                           dir=parent)
    old = None
    try:
        yield tmp
        os.chmod(tmp, _default_mode(0o777))
        if osp.isdir(path):
            old = tempfile.mkdtemp(prefix=f'.{osp.basename(osp.abspath(path))}.', suffix='.old',
                                   dir=parent)
            os.replace(path, old)  # an empty `old` is replaced by the previous output
        os.replace(tmp, path)
    except BaseException as e:
        if old is not None and osp.isdir(old) and not osp.exists(path):
            os.replace(old, path)  # put the previous output back
        full = _disk_full(e, parent, needed_bytes, path) if isinstance(e, Exception) else None
        if full is None:
            raise
        raise full from None
    finally:
        for leftover in (tmp, old):
            if leftover is not None and osp.exists(leftover):
                shutil.rmtree(leftover)


def first_missing_dir(path) -> Optional[str]:
    """The outermost folder of ``path`` (itself included) that does not exist yet: what
    ``os.makedirs(path)`` would create first; None when ``path`` exists."""
    path = osp.abspath(os.fspath(path))
    first = None
    while not osp.exists(path):
        first, path = path, osp.dirname(path)
    return first


def remove_empty_dirs(path, up_to: Optional[str]) -> None:
    """Remove ``path`` and its parents up to ``up_to`` (included) while they are empty folders:
    undo ``os.makedirs`` of a write that did not happen (``up_to``: from
    :func:`first_missing_dir`; None removes nothing)."""
    if up_to is None:
        return
    path, up_to = osp.abspath(os.fspath(path)), osp.abspath(up_to)
    while path == up_to or path.startswith(up_to + os.sep):
        try:
            os.rmdir(path)
        except OSError:  # not empty (or gone): keep it and its parents
            return
        path = osp.dirname(path)
