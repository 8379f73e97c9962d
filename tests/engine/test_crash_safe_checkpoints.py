"""Crash-safe training checkpoints, for real: ``tools/train.py`` in a subprocess killed
(``SIGKILL``) while it writes a checkpoint, a full disk (a small tmpfs when the test may mount
one, else an injected ``ENOSPC``), a damaged newest checkpoint, and checked ``load_from`` /
``--resume`` inputs. The expectations are independent of the code under test: the folder's
listing, ``zipfile``'s reading of each file, the iteration the resumed run reaches."""
import copy
import errno
import os
import os.path as osp
import random
import signal
import subprocess
import sys
import time
import zipfile

import pytest
import torch

import soma  # noqa: F401
from soma.apis.demo import demo_config
from soma.datasets import make_synthetic_dg_benchmark
from conftest import TINY_FCN_HEAD  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SIZE = 64
ITERS = 6


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('crash_safe_data')
    make_synthetic_dg_benchmark(root, num_train=4, num_val=1, size=(SIZE, SIZE))
    return str(root)


def _config(data_root, folder, embed_dim=64, max_keep=1, iters=ITERS, name='cfg.py'):
    """A tiny SoMA segmentor config, a checkpoint every iteration, written to ``folder``."""
    cfg = demo_config(data_root, osp.join(folder, 'work'), iters, val=False, image_size=SIZE)
    cfg.model.backbone.embed_dim = embed_dim
    cfg.model.decode_head = dict(copy.deepcopy(TINY_FCN_HEAD), in_channels=embed_dim)
    cfg.default_hooks.checkpoint.interval = 1
    cfg.default_hooks.checkpoint.max_keep_ckpts = max_keep
    cfg.default_hooks.logger.interval = 1
    cfg.visualizer.vis_backends = [dict(type='LocalVisBackend')]
    path = osp.join(folder, name)
    os.makedirs(folder, exist_ok=True)
    cfg.dump(path)
    return path, cfg.work_dir


def _train(*args, **popen):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1')
    return subprocess.Popen([sys.executable, osp.join(REPO, 'tools', 'train.py'), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=env, **popen)


def _whole(path):
    """An independent check that a checkpoint file is whole: zipfile reads its directory and
    every member's CRC."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile):
        return False


def _checkpoints(work_dir):
    return sorted(n for n in os.listdir(work_dir) if n.endswith('.pth'))


def _kill_during_save(config, work_dir, nth, timeout=300):
    """Start training and SIGKILL it while its ``nth`` checkpoint is being written (a
    temporary file of the save exists); return whether the kill landed during a save."""
    proc = _train(config)
    seen, start = set(), time.time()
    try:
        while proc.poll() is None and time.time() - start < timeout:
            if osp.isdir(work_dir):
                tmp = {n for n in os.listdir(work_dir) if n.endswith('.tmp')}
                if tmp - seen:
                    seen |= tmp
                    if len(seen) >= nth:
                        proc.send_signal(signal.SIGKILL)
                        proc.wait()
                        return True
            time.sleep(0.0005)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    return False


def test_a_kill_during_any_save_always_resumes(data_root, tmp_path):
    rng = random.Random(0)
    landed = 0
    for trial in range(3):
        folder = str(tmp_path / f'trial{trial}')
        # a wider ViT: a checkpoint of ~10 MB takes long enough to write to be caught at it
        config, work_dir = _config(data_root, folder, embed_dim=256)
        landed += _kill_during_save(config, work_dir, nth=rng.randint(1, ITERS - 1))
        # whatever the moment: every checkpoint file there is whole, last_checkpoint names one
        files = _checkpoints(work_dir) if osp.isdir(work_dir) else []
        assert all(_whole(osp.join(work_dir, f)) for f in files), files
        pointer = osp.join(work_dir, 'last_checkpoint')
        if osp.exists(pointer):
            with open(pointer) as f:
                assert _whole(f.read().strip())
        proc = _train(config, '--resume')
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        assert f'Iter(train) [{ITERS}/{ITERS}]' in out + err
        assert _checkpoints(work_dir) == [f'iter_{ITERS}.pth']  # max_keep_ckpts=1, whole
        assert _whole(osp.join(work_dir, f'iter_{ITERS}.pth'))
        assert not [n for n in os.listdir(work_dir) if n.endswith('.tmp')]
    assert landed >= 1, 'no kill landed inside a checkpoint save'


def test_resume_skips_a_damaged_newest_checkpoint(data_root, tmp_path):
    config, work_dir = _config(data_root, str(tmp_path), max_keep=3, iters=4)
    proc = _train(config)
    assert proc.communicate(timeout=600) and proc.returncode == 0
    newest = osp.join(work_dir, 'iter_4.pth')
    with open(newest, 'r+b') as f:  # cut short, as a non-atomic writer killed mid-way leaves it
        f.truncate(os.path.getsize(newest) // 2)
    proc = _train(config, '--resume', '--cfg-options', 'train_cfg.max_iters=5')
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    log = out + err
    assert 'skipping' in log and 'iter_4.pth' in log and 'damaged' in log
    assert 'resumed epoch: 0, iter: 3' in log


def test_a_full_disk_ends_the_run_in_one_line_with_only_whole_files(data_root, tmp_path,
                                                                    small_filesystem):
    # the size of one checkpoint of this model, measured in a normal folder
    config, work_dir = _config(data_root, str(tmp_path / 'measure'), iters=1)
    proc = _train(config)
    assert proc.communicate(timeout=600) and proc.returncode == 0
    one = os.path.getsize(osp.join(work_dir, 'iter_1.pth'))
    # room for one checkpoint and the logs, not for the second one written beside it
    small = str(small_filesystem(one * 1.6))
    config, work_dir = _config(data_root, small, iters=ITERS)
    proc = _train(config)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith('error: disk full: writing ') and 'iter_2.pth' in last, err[-2000:]
    assert small in last and 'free' in last and 'nothing was written' in last
    assert 'Traceback' not in err
    assert _checkpoints(work_dir) == ['iter_1.pth'] and _whole(osp.join(work_dir, 'iter_1.pth'))
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        assert f.read().strip().endswith('iter_1.pth')
    assert not [n for n in os.listdir(work_dir) if n.endswith('.tmp')]


def _disk_full_when(fails):
    """An ``open`` whose binary writes to a path for which ``fails(path)`` holds write 1000
    bytes, then fail as a full disk does."""
    real_open = open

    def failing_open(path, mode='r', *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if 'b' in mode and 'w' in mode and fails(path):
            f.write(b'x' * 1000)
            f.close()
            raise OSError(errno.ENOSPC, 'No space left on device')
        return f
    return failing_open


def test_an_injected_enospc_leaves_the_previous_checkpoint(data_root, tmp_path, monkeypatch):
    """The same as above in-process, without a mount: the second save's write fails."""
    from mmengine.runner import Runner

    from soma.apis.train import use_safe_checkpoints
    from soma.utils import checkpoint_io
    cfg_path, work_dir = _config(data_root, str(tmp_path), iters=3)
    from mmengine.config import Config
    cfg = use_safe_checkpoints(Config.fromfile(cfg_path))
    writes = []

    def second_write(path):  # the second checkpoint: the disk fills up half-way
        writes.append(path)
        return len(writes) == 2

    monkeypatch.setattr(checkpoint_io, 'open', _disk_full_when(second_write), raising=False)
    with pytest.raises(OSError, match=r'disk full: writing .*iter_2\.pth needs about'):
        Runner.from_cfg(cfg).train()
    assert _checkpoints(work_dir) == ['iter_1.pth'] and _whole(osp.join(work_dir, 'iter_1.pth'))
    assert not [n for n in os.listdir(work_dir) if n.endswith('.tmp')]


def test_the_previous_best_checkpoint_is_removed_only_after_the_new_one_is_whole(
        data_root, tmp_path, monkeypatch):
    """``save_best``: mmengine removes the previous best file before writing the new one; here
    a failed write of the new best leaves the previous best, and a good one replaces it."""
    from mmengine.config import Config
    from mmengine.runner import Runner

    from soma.apis.train import use_safe_checkpoints
    from soma.engine import SafeCheckpointHook
    from soma.utils import checkpoint_io
    cfg_path, work_dir = _config(data_root, str(tmp_path), iters=3)
    cfg = use_safe_checkpoints(Config.fromfile(cfg_path))
    cfg.default_hooks.checkpoint.update(save_best='mIoU', rule='greater')
    runner = Runner.from_cfg(cfg)
    hook = next(h for h in runner.hooks if isinstance(h, SafeCheckpointHook))
    hook.before_train(runner)

    def best_at(step, score):
        runner.train_loop._iter = step  # the iteration the validation ran after
        hook.after_val_epoch(runner, {'mIoU': score})

    best_at(1, 10.0)
    assert _checkpoints(work_dir) == ['best_mIoU_iter_1.pth']
    monkeypatch.setattr(checkpoint_io, 'open',
                        _disk_full_when(lambda path: 'best_mIoU_iter_2' in str(path)),
                        raising=False)
    with pytest.raises(OSError, match=r'disk full: writing .*best_mIoU_iter_2\.pth'):
        best_at(2, 20.0)
    assert _checkpoints(work_dir) == ['best_mIoU_iter_1.pth']
    assert _whole(osp.join(work_dir, 'best_mIoU_iter_1.pth'))
    assert not [n for n in os.listdir(work_dir) if n.endswith('.tmp')]
    monkeypatch.undo()
    best_at(3, 30.0)
    assert _checkpoints(work_dir) == ['best_mIoU_iter_3.pth']
    assert _whole(osp.join(work_dir, 'best_mIoU_iter_3.pth'))
    best_at(4, 5.0)  # not better: nothing changes
    assert _checkpoints(work_dir) == ['best_mIoU_iter_3.pth']


# ------------------------------------------------------------------ checked loads
def _one_line_error(proc):
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, (out + err)[-3000:]
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith('error: ') and 'Traceback' not in err, err[-3000:]
    return lines[-1]


def test_load_from_another_architecture_is_refused_before_training(data_root, tmp_path):
    other, other_work = _config(data_root, str(tmp_path / 'other'), embed_dim=32, iters=1)
    proc = _train(other)
    assert proc.communicate(timeout=600) and proc.returncode == 0
    config, work_dir = _config(data_root, str(tmp_path / 'mine'), iters=2)
    line = _one_line_error(_train(config, '--cfg-options',
                                  f'load_from={osp.join(other_work, "iter_1.pth")}'))
    assert 'iter_1.pth' in line and ('shape' in line or 'width' in line), line
    # nothing trained (the work dir made for the run is removed with it)
    assert not osp.isdir(work_dir) or not [n for n in os.listdir(work_dir) if n.endswith('.pth')]


@pytest.mark.parametrize('kind', ['corrupt', 'truncated', 'code'])
@pytest.mark.parametrize('how', ['load_from', 'resume'])
def test_bad_files_are_one_line_errors(data_root, tmp_path, kind, how):
    config, work_dir = _config(data_root, str(tmp_path), iters=1)
    bad = str(tmp_path / f'{kind}.pth')
    if kind == 'corrupt':
        with open(bad, 'wb') as f:
            f.write(os.urandom(4096))
    elif kind == 'truncated':
        torch.save({'state_dict': {'w': torch.randn(256, 256)}}, bad)
        with open(bad, 'r+b') as f:
            f.truncate(os.path.getsize(bad) // 2)
    else:
        torch.save({'state_dict': {}, 'x': _RunsCode()}, bad)
    args = (['--resume', bad] if how == 'resume'
            else ['--cfg-options', f'load_from={bad}'])
    line = _one_line_error(_train(config, *args))
    assert bad in line
    expected = 'not plain data' if kind == 'code' else 'corrupt or truncated'
    assert expected in line, line


class _RunsCode:
    def __reduce__(self):
        return (os.system, ('echo pwned',))


def test_resume_of_a_file_without_training_state_says_so(data_root, tmp_path):
    config, work_dir = _config(data_root, str(tmp_path), iters=1)
    proc = _train(config)
    assert proc.communicate(timeout=600) and proc.returncode == 0
    weights_only = str(tmp_path / 'weights.pth')
    ckpt = torch.load(osp.join(work_dir, 'iter_1.pth'), weights_only=True)
    torch.save({'state_dict': ckpt['state_dict']}, weights_only)
    line = _one_line_error(_train(config, '--resume', weights_only))
    assert 'no training state' in line and weights_only in line
