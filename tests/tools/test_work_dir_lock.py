"""One training per work dir (``WORK_DIR/train.lock``), with real ``tools/train.py``
processes: a second training stops at once naming the first one's pid; after a ``kill -9``
the stale lock is taken over and ``--resume`` continues; a finished run resumes too."""
import copy
import os
import os.path as osp
import signal
import subprocess
import sys
import time

import pytest

import soma  # noqa: F401
from soma.apis.demo import demo_config
from soma.datasets import make_synthetic_dg_benchmark
from soma.utils.run_lock import LOCK_NAME, WorkDirBusyError, work_dir_lock
from conftest import TINY_FCN_HEAD  # noqa: E402

sys.path.insert(0, osp.dirname(__file__))
from _tool_runner import REPO, tool_subprocess  # noqa: E402

ONE_THREAD = True


def _wait_for(condition, what, timeout=300):
    start = time.time()
    while not condition():
        if time.time() - start > timeout:
            raise AssertionError(f'timed out waiting for {what}')
        time.sleep(0.2)


def _lock_text(work):
    path = osp.join(work, LOCK_NAME)
    return open(path).read() if osp.isfile(path) else ''


def _last_iter(work):
    with open(osp.join(work, 'last_checkpoint')) as f:
        return int(osp.basename(f.read().strip())[len('iter_'):-len('.pth')])


@pytest.fixture(scope='module')
def long_config(tmp_path_factory):
    """The tiny demo recipe with an FCN head, long (100000 iterations), a checkpoint every 2
    iterations, all kept (so a kill never hits the only one)."""
    root = tmp_path_factory.mktemp('lock')
    make_synthetic_dg_benchmark(str(root / 'data'), num_train=4, num_val=2, size=(64, 64))
    cfg = demo_config(str(root / 'data'), str(root / 'unused'), 100000, val=False,
                      image_size=64)
    cfg.model.decode_head = copy.deepcopy(TINY_FCN_HEAD)
    cfg.default_hooks.checkpoint.update(interval=2, max_keep_ckpts=-1)
    cfg.default_hooks.logger.interval = 1
    path = str(root / 'cfg.py')
    cfg.dump(path)
    return path


def test_second_training_stops_then_killed_and_finished_runs_resume(long_config, tmp_path):
    work = str(tmp_path / 'work')
    first = subprocess.Popen([sys.executable, osp.join(REPO, 'tools', 'train.py'), long_config,
                              '--work-dir', work], cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: f'pid={first.pid} ' in _lock_text(work), 'the first run to lock')
        _wait_for(lambda: osp.isfile(osp.join(work, 'last_checkpoint')), 'a checkpoint')
        runs_before = sorted(os.listdir(work))
        start = time.time()
        second = tool_subprocess('train.py', long_config, '--work-dir', work)
        assert second.returncode == 1
        err = second.stderr.strip().splitlines()
        assert err[-1].startswith('error: ') and f'pid {first.pid} ' in err[-1], err[-3:]
        assert 'in use by another training' in err[-1]
        assert time.time() - start < 120  # at once: no model built, no data read
        new = set(os.listdir(work)) - set(runs_before)
        assert not [n for n in new if not n.startswith('iter_')], new  # no log dir of its own
        assert first.poll() is None  # the first run goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert f'pid={first.pid} ' in _lock_text(work)  # a dead run's (stale) lock

    # --resume after the kill: the stale lock is taken over, training continues
    done = _last_iter(work)
    resumed = tool_subprocess('train.py', long_config, '--work-dir', work, '--resume',
                              '--cfg-options', f'train_cfg.max_iters={done + 1}')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    logs = resumed.stdout + resumed.stderr
    assert f'pid={first.pid} ' in logs and 'killed or crashed' in logs and 'taking it over' in logs
    assert 'resumed' in logs.lower() and osp.isfile(osp.join(work, f'iter_{done + 1}.pth'))
    assert _lock_text(work) == ''  # released at the end

    # --resume of a finished run: no stale lock, it goes on
    again = tool_subprocess('train.py', long_config, '--work-dir', work, '--resume',
                            '--cfg-options', f'train_cfg.max_iters={done + 2}')
    assert again.returncode == 0, again.stderr[-3000:]
    assert 'taking it over' not in again.stdout + again.stderr
    assert osp.isfile(osp.join(work, f'iter_{done + 2}.pth'))


def test_lock_in_process(tmp_path):
    work = str(tmp_path / 'w')
    with work_dir_lock(work) as path:
        assert f'pid={os.getpid()} ' in open(path).read()
        with pytest.raises(WorkDirBusyError, match=f'pid {os.getpid()} on '):
            with work_dir_lock(work):
                pass
        # another process sees it held, too
        probe = subprocess.run(
            [sys.executable, '-c', 'import sys; from soma.utils.run_lock import work_dir_lock\n'
             'try:\n    work_dir_lock(sys.argv[1]).__enter__()\n'
             'except OSError as e:\n    print(e); sys.exit(3)', work],
            cwd=REPO, capture_output=True, text=True, timeout=120)
        assert probe.returncode == 3 and f'pid {os.getpid()} ' in probe.stdout
    assert open(path).read() == ''
    with work_dir_lock(work):  # free again
        pass
