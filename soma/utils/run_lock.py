"""One training per work dir: a lock file held by the live process that trains there.

``<work_dir>/train.lock`` is locked with ``flock`` for as long as the training runs; the
kernel releases the lock when the process ends, however it ends (``kill -9`` included), so
a lock is never left behind by a dead process. The file says who holds it (pid, host, start
time): a second training in the same work dir stops at once and names that pid. A clean end
empties the file; a file still naming a run that no longer holds the lock was left by a
killed or crashed run, and is taken over with a warning (``--resume`` then continues it).

On a filesystem without ``flock`` (some network mounts) the pid in the file is checked
instead: a live pid on this host holds the work dir, a dead one is a stale lock taken over;
a pid on another host cannot be checked and is taken to hold it.
"""
import contextlib
import errno
import fcntl
import logging
import os
import os.path as osp
import socket
import time
from typing import Iterator

from mmengine.logging import print_log

from soma.utils.atomic import first_missing_dir, remove_empty_dirs

__all__ = ['LOCK_NAME', 'WorkDirBusyError', 'work_dir_lock']

LOCK_NAME = 'train.lock'
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class WorkDirBusyError(OSError):
    """Another live training holds the work dir; the message names its pid."""


def _read(fd):
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 4096).decode('utf-8', 'replace').strip()


def _write(fd, text):
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, text.encode())
    os.fsync(fd)


def _holder(text):
    """``{'pid': ..., 'host': ..., 'since': ...}`` from the lock file's text."""
    return dict(part.split('=', 1) for part in text.split() if '=' in part)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _held_by_other(holder):
    """Without flock: does the run named in the file still hold the work dir?"""
    if not holder.get('pid', '').isdigit():
        return False
    if holder.get('host') != socket.gethostname():
        return True
    return int(holder['pid']) != os.getpid() and _pid_alive(int(holder['pid']))


def _busy_message(work_dir, path, holder):
    who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
    since = f", since {holder['since'].replace('T', ' ')}" if 'since' in holder else ''
    return (f'{work_dir} is in use by another training ({who}{since}); wait for it to end, '
            f'stop it, or choose another --work-dir (lock file {path})')


@contextlib.contextmanager
def work_dir_lock(work_dir: str) -> Iterator[str]:
    """Hold ``<work_dir>/train.lock`` while the block runs; :class:`WorkDirBusyError` at once
    when another live training holds it. Yields the lock file's path.

    When the block raised and the work dir holds nothing but a lock file this call made (a
    run stopped by a bad input before it wrote anything), the file is removed, and so are
    the folders this call made for the work dir.
    """
    new_dir = first_missing_dir(work_dir)
    os.makedirs(work_dir, exist_ok=True)
    path = osp.join(work_dir, LOCK_NAME)
    new_file = not osp.exists(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkDirBusyError(_busy_message(work_dir, path, _holder(_read(fd)))) from None
        except OSError as e:
            if e.errno not in _NO_FLOCK:
                raise
            if _held_by_other(_holder(_read(fd))):
                raise WorkDirBusyError(_busy_message(work_dir, path, _holder(_read(fd)))) from None
        previous = _read(fd)
        if previous:
            print_log(f'{path}: the training it names ({previous}) ended without releasing the '
                      f'work dir (killed or crashed); taking it over', logger='current',
                      level=logging.WARNING)
        _write(fd, f'pid={os.getpid()} host={socket.gethostname()} '
                   f'since={time.strftime("%Y-%m-%dT%H:%M:%S")}\n')
        try:
            yield path
        except BaseException:
            if new_file and os.listdir(work_dir) == [LOCK_NAME]:  # removed while still held
                os.remove(path)
                remove_empty_dirs(work_dir, new_dir)
            raise
        finally:
            _write(fd, '')  # a clean end: nobody holds it
    finally:
        os.close(fd)  # releases the flock
