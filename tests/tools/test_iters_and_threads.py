"""``tools/train.py --iters N`` rescales the whole schedule (as ``tools/demo.py --iters``), and
torch's CPU thread count follows OMP_NUM_THREADS, the config's ``cpu_threads`` or the free
cores.

Expected schedule values are written out from the configs' numbers by hand; the learning
rates and weight decays a real (tiny) run used are compared with mmengine's formulas: PolyLR
``lr_t = lr_0 (1 - t / (end - begin - 1)) ** power`` (it reaches ``eta_min`` at ``end - 1``),
cosine ``eta_min + (v_0 - eta_min) (1 + cos(pi t / (end - begin))) / 2``.
"""
import copy
import json
import math
import os
import os.path as osp
import sys

import pytest
import torch

import soma  # noqa: F401
from soma.apis import train as train_api
from soma.apis.demo import demo_config
from soma.apis.launch import cpu_thread_count, cpu_threads, set_max_iters
from soma.datasets import make_synthetic_dg_benchmark
from conftest import TINY_FCN_HEAD  # noqa: E402

sys.path.insert(0, osp.dirname(__file__))
from _tool_runner import tool_subprocess  # noqa: E402

ONE_THREAD = True
REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
ACDC = osp.join(REPO, 'configs', 'soma', 'soma_dinov2_mask2former_ACDC_1024x1024_bs4x2.py')


def test_iters_rescales_every_scheduler_interval_and_ema_start():
    """The ACDC recipe (40k: warm-up 10k, poly 10k-40k, weight-decay cosine 0-40k, EMA from
    20k, validation and checkpoints every 4k) trained for 400 iterations."""
    cfg = train_api.build_train_config(train_api.parse_args([ACDC, '--iters', '400']))
    assert cfg.train_cfg.max_iters == 400
    got = [(s.type, s.begin, s.end) for s in cfg.param_scheduler]
    assert got == [('LinearLR', 0, 100), ('PolyLR', 100, 400),
                   ('CosineAnnealingParamScheduler', 0, 400)]
    assert cfg.train_cfg.val_interval == 40 and cfg.default_hooks.checkpoint.interval == 40
    ema = [h for h in cfg.custom_hooks if h.type == 'EMAHook']
    assert [h.begin_iter for h in ema] == [200]
    # without --iters: the config's own length, untouched
    cfg = train_api.build_train_config(train_api.parse_args([ACDC]))
    assert [(s.begin, s.end) for s in cfg.param_scheduler] == [(0, 10000), (10000, 40000),
                                                                (0, 40000)]


def test_iters_refuses_what_cannot_be_rescaled(capsys):
    from mmengine.config import Config
    cfg = Config(dict(train_cfg=dict(max_epochs=3), param_scheduler=[]))
    with pytest.raises(ValueError, match='iteration-based'):
        set_max_iters(cfg, 10)
    cfg = Config(dict(train_cfg=dict(max_iters=100),
                      param_scheduler=[dict(type='PolyLR', end=100)]))  # by_epoch by default
    with pytest.raises(ValueError, match=r'param_scheduler\[0\] \(PolyLR\) counts epochs'):
        set_max_iters(cfg, 10)
    assert train_api.main([ACDC, '--iters', '0']) == 1
    assert capsys.readouterr().err.strip() == 'error: max_iters must be an integer >= 1, got 0'


@pytest.fixture(scope='module')
def tiny_config(tmp_path_factory):
    """The demo config (400 iterations, poly LR, cosine weight decay) on 64-px synthetic data
    with a small FCN head."""
    root = tmp_path_factory.mktemp('iters')
    make_synthetic_dg_benchmark(str(root / 'data'), num_train=4, num_val=2, size=(64, 64))
    cfg = demo_config(str(root / 'data'), str(root / 'unused'), None, val=False, image_size=64)
    cfg.model.decode_head = copy.deepcopy(TINY_FCN_HEAD)
    cfg.default_hooks.logger.interval = 1
    path = str(root / 'cfg.py')
    cfg.dump(path)
    return path


def _scalars(work_dir):
    runs = [d for d in os.listdir(work_dir) if osp.isdir(osp.join(work_dir, d, 'vis_data'))]
    with open(osp.join(work_dir, runs[-1], 'vis_data', 'scalars.json')) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_train_with_iters_runs_the_whole_poly_schedule(tiny_config, tmp_path):
    work = str(tmp_path / 'work')
    assert train_api.main([tiny_config, '--iters', '3', '--work-dir', work]) == 0
    rows = _scalars(work)
    assert [row['iter'] for row in rows] == [1, 2, 3] and osp.isfile(osp.join(work, 'iter_3.pth'))
    lrs = [row['lr'] for row in rows]  # the rates iterations 1, 2, 3 used (t = 0, 1, 2)
    for t, lr in enumerate(lrs):  # PolyLR(power 0.9, eta_min 0) over 3 iterations, not 400
        assert lr == pytest.approx(lrs[0] * (1 - t / (3 - 1)) ** 0.9, rel=1e-6, abs=1e-12)
    # weight decay: cosine 0.05 -> 1e-5 over 3 iterations (over 400 it would still be ~0.05)
    assert rows[-1]['weight_decay'] == pytest.approx(
        1e-5 + (0.05 - 1e-5) * (1 + math.cos(math.pi * 2 / 3)) / 2, rel=1e-6)


def test_cfg_options_max_iters_alone_warns(tiny_config, tmp_path):
    res = tool_subprocess('train.py', tiny_config, '--work-dir', tmp_path / 'w', '--cfg-options',
                          'train_cfg.max_iters=1', 'default_hooks.checkpoint.interval=1')
    assert res.returncode == 0, res.stderr[-2000:]
    logs = res.stdout + res.stderr
    assert 'PolyLR ends at iteration 400, after train_cfg.max_iters=1' in logs
    assert 'use --iters 1' in logs
    assert 'torch CPU threads: 1' in logs  # the tiny config's cpu_threads


def test_cpu_thread_count_rule(monkeypatch):
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    assert cpu_thread_count(dict(cpu_threads=1)) == 1
    assert cpu_thread_count(dict(cpu_threads=3)) == 3
    for bad in (0, -1, 1.5, True, 'two'):
        with pytest.raises(ValueError, match='cpu_threads must be an integer >= 1'):
            cpu_thread_count(dict(cpu_threads=bad))
    # the free cores: the cores this process may use minus the 1-minute load average
    cores = len(os.sched_getaffinity(0))
    expected = {max(1, min(cores, int(cores - os.getloadavg()[0] + 0.5)))}
    got = cpu_thread_count(dict(cpu_threads='auto'))
    expected.add(max(1, min(cores, int(cores - os.getloadavg()[0] + 0.5))))
    assert got in expected and 1 <= got <= cores
    assert cpu_thread_count(None) in range(1, cores + 1)
    # OMP_NUM_THREADS (torchrun sets it): torch already follows it, the config is not read
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    assert cpu_thread_count(dict(cpu_threads=3)) == torch.get_num_threads()


def test_cpu_threads_restores_the_previous_count(monkeypatch):
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    before = torch.get_num_threads()
    with cpu_threads(dict(cpu_threads=2)) as count:
        assert count == 2 and torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
