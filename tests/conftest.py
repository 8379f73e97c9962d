"""Shared test set-up: tiny model configs and a deterministic, headless environment."""
import logging
import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
os.environ.setdefault('MPLBACKEND', 'Agg')

# A 4-block DINOv2 small enough for every test; configs override the release's ViT-L with it.
TINY_BACKBONE = dict(
    type='DinoVisionTransformer', img_size=64, patch_size=16, embed_dim=64, depth=4,
    num_heads=2, out_indices=[0, 1, 2, 3], init_cfg=None)
# A small FCN head on its last map (import it: ``from conftest import TINY_FCN_HEAD``).
TINY_FCN_HEAD = dict(type='FCNHead', in_channels=64, in_index=3, channels=16, num_convs=1,
                     concat_input=False, dropout_ratio=0.0, num_classes=19,
                     norm_cfg=dict(type='GN', num_groups=4), align_corners=False,
                     loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False,
                                      loss_weight=1.0))


@pytest.fixture
def repo_root():
    return REPO_ROOT


@pytest.fixture
def tiny_backbone_cfg():
    return dict(TINY_BACKBONE)


@pytest.fixture(autouse=True, scope='module')
def registry_scope(request):
    """Run a test module in the mmengine default scope it names (``DEFAULT_SCOPE = 'mmdet'``).

    Builders such as ``DET_MODELS.build`` resolve types in the *current* default scope, which
    an earlier test module may have left at 'mmseg'.
    """
    scope = getattr(request.module, 'DEFAULT_SCOPE', None)
    if scope is None:
        yield
        return
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope(scope):
        yield


@pytest.fixture(autouse=True, scope='module')
def one_thread(request):
    """One torch thread for a test module that sets ``ONE_THREAD = True``: its tiny ops gain
    nothing from a thread pool, whose waiting dominates on a shared CPU."""
    if not getattr(request.module, 'ONE_THREAD', False):
        yield
        return
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _CurrentStdout:
    """``sys.stdout`` as it is when written to (the stream captured for the running test)."""

    def write(self, text):
        return sys.stdout.write(text)

    def flush(self):
        sys.stdout.flush()


@pytest.fixture(autouse=True)
def mmengine_logs_to_the_running_test():
    """mmengine's loggers outlive the test that made them, their console handlers bound to
    that test's captured stdout, closed after it ('--- Logging error ---' in a later test):
    make them write to the stdout of the moment."""
    from mmengine.logging import MMLogger
    for logger in list(MMLogger._instance_dict.values()):
        for handler in logger.handlers:
            if type(handler) is logging.StreamHandler:
                handler.stream = _CurrentStdout()
    yield


@pytest.fixture
def small_filesystem(tmp_path):
    """``make(size)`` -> the path of a fresh tmpfs of ``size`` bytes (unmounted after the
    test), or a skip where this machine does not let the test mount one."""
    import subprocess
    mounted = []

    def make(size, name='small'):
        path = tmp_path / name
        path.mkdir()
        done = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={int(size)}', 'tmpfs',
                               str(path)], capture_output=True)
        if done.returncode != 0:
            pytest.skip('cannot mount a small tmpfs here (not root?): the injected-ENOSPC '
                        'tests cover the same path')
        mounted.append(path)
        return path

    yield make
    for path in mounted:
        subprocess.run(['umount', str(path)], capture_output=True)
