"""The one atomic writer of the project: every file or folder it writes appears complete or
not at all.

Data goes to a temporary file (or folder) in the target's own folder, which is renamed onto
the target only when writing succeeded; on any error the temporary is removed, so a crash,
a kill or a full disk never leaves a half-written output, and an existing target stays as
it was. Pure Python (``soma.peft`` uses it too).
"""
import contextlib
import os
import os.path as osp
import shutil
import tempfile
from typing import Iterable, Iterator

__all__ = ['atomic_output', 'atomic_output_dir']


def _default_mode(full: int) -> int:
    """``full`` (0o666 for a file, 0o777 for a folder) less the umask, as ``open`` /
    ``mkdir`` would create it (mkstemp / mkdtemp create 0600 / 0700)."""
    umask = os.umask(0)
    os.umask(umask)
    return full & ~umask


@contextlib.contextmanager
def atomic_output(path) -> Iterator[str]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success."""
    path = os.fspath(path)
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{osp.basename(path)}.', suffix='.tmp', dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _default_mode(0o666))
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_output_dir(path, replaceable: Iterable[str] = ()) -> Iterator[str]:
    """Yield a temporary folder next to ``path``; on success it becomes ``path``.

    ``path`` may be missing, an empty folder, or a folder holding only files named in
    ``replaceable`` (an earlier output of the same writer), which is then replaced as a
    whole; anything else is refused with ``FileExistsError`` before anything is written.
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
    except BaseException:
        if old is not None and osp.isdir(old) and not osp.exists(path):
            os.replace(old, path)  # put the previous output back
        raise
    finally:
        for leftover in (tmp, old):
            if leftover is not None and osp.exists(leftover):
                shutil.rmtree(leftover)
