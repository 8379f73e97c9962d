"""OptionalTensorboardVisBackend in a real training run (tools/train.py, tiny segmentor).

With TensorBoard importable the run writes an events file whose scalars equal the ones the
json backend (LocalVisBackend) wrote; when the backend cannot import its writer (its own
``writer_module`` switch pointed at a missing module) the run still trains and logs why.
"""
import copy
import glob
import json
import os.path as osp

import pytest
from mmengine.config import Config

import soma  # noqa: F401
from soma.apis import run_train
from soma.apis.demo import demo_config
from soma.datasets import make_synthetic_dg_benchmark
from conftest import TINY_FCN_HEAD  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
FCN_HEAD = TINY_FCN_HEAD


def _default_vis_backends(runtime):
    return Config.fromfile(osp.join(REPO, runtime)).vis_backends


def test_default_runtimes_log_to_tensorboard_and_json():
    for runtime in ('configs/_base_/default_runtime.py',
                    'DGOD/configs/_base_/default_runtime.py'):
        assert [b['type'] for b in _default_vis_backends(runtime)] == [
            'LocalVisBackend', 'OptionalTensorboardVisBackend'], runtime


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('vis_backend_data')
    make_synthetic_dg_benchmark(root, num_train=2, num_val=1, size=(64, 64))
    return str(root)


def _train(data_root, work, **backend_options):
    cfg = demo_config(data_root, work, 2, val=False, image_size=64)
    cfg.model.decode_head = copy.deepcopy(FCN_HEAD)
    cfg.default_hooks.logger.interval = 1
    backends = copy.deepcopy(_default_vis_backends('configs/_base_/default_runtime.py'))
    backends[1].update(backend_options)
    cfg.visualizer.vis_backends = backends
    config = str(work / 'cfg.py')
    work.mkdir()
    cfg.dump(config)
    runner = run_train([config, '--work-dir', str(work)])
    vis_data = osp.join(runner.log_dir, 'vis_data')
    with open(osp.join(vis_data, 'scalars.json')) as f:
        scalars = [json.loads(line) for line in f]
    return runner, vis_data, scalars


def test_events_file_holds_the_logged_scalars(data_root, tmp_path):
    pytest.importorskip('tensorboard')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    runner, vis_data, scalars = _train(data_root, tmp_path / 'work')
    events = glob.glob(osp.join(vis_data, 'events.out.tfevents.*'))
    assert len(events) == 1
    acc = EventAccumulator(events[0])
    acc.Reload()
    assert [s['step'] for s in scalars] == [1, 2] and 'loss' in scalars[0]
    for name in ('loss', 'lr'):
        logged = [(e.step, e.value) for e in acc.Scalars(name)]
        assert logged == [(s['step'], pytest.approx(s[name], rel=1e-6)) for s in scalars], name
    assert 'config/text_summary' in acc.Tags()['tensors']  # add_config: the config as text


def test_without_tensorboard_the_run_still_trains(data_root, tmp_path):
    runner, vis_data, scalars = _train(data_root, tmp_path / 'work',
                                       writer_module='soma_tests_no_such_module')
    assert runner.iter == 2 and [s['step'] for s in scalars] == [1, 2]
    assert not glob.glob(osp.join(vis_data, 'events.out.tfevents.*'))
    backend = runner.visualizer.get_backend('OptionalTensorboardVisBackend')
    assert backend.enabled is False and backend.experiment is None
    with open(glob.glob(osp.join(runner.log_dir, '*.log'))[0]) as f:
        log = f.read()
    assert log.count('TensorBoard logging is off') == 1
    assert 'soma_tests_no_such_module' in log
