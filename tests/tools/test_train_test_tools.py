"""tools/train.py, tools/test.py and tools/dist_train.sh on a tiny model and synthetic data."""
import copy
import os
import os.path as osp
import socket
import subprocess
import sys

import pytest
import torch

import soma  # noqa: F401
from soma.apis import test as test_api
from soma.apis import train as train_api
from soma.apis.demo import demo_config
from soma.datasets import make_synthetic_dg_benchmark
from soma.utils.checkpoint_io import load_checkpoint_file, save_checkpoint_file
from conftest import TINY_FCN_HEAD  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SIZE = 64
FCN_HEAD = TINY_FCN_HEAD


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('synthetic_seg_tools')
    make_synthetic_dg_benchmark(root, num_train=4, num_val=2, size=(SIZE, SIZE))
    return str(root)


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
    """A 'converted DINOv2' for the tiny backbone (plain DINOv2 keys)."""
    from soma.models.backbones.dinov2 import DinoVisionTransformer
    torch.manual_seed(7)
    vit = DinoVisionTransformer(img_size=SIZE, patch_size=16, embed_dim=64, depth=4, num_heads=2,
                                init_values=1.0, out_indices=[0, 1, 2, 3])
    path = str(tmp_path_factory.mktemp('converted') / 'tiny_converted.pth')
    torch.save(vit.state_dict(), path)
    return path


def write_cfg(data_root, path, iters=2, backbone_ckpt=None, **changes):
    cfg = demo_config(data_root, osp.dirname(path), iters, val=True, image_size=SIZE)
    cfg.model.decode_head = copy.deepcopy(FCN_HEAD)
    cfg.default_hooks.logger.interval = 1
    if backbone_ckpt:
        cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=backbone_ckpt)
    cfg.merge_from_dict(changes)
    os.makedirs(osp.dirname(path), exist_ok=True)
    cfg.dump(path)
    return path


@pytest.fixture(scope='module')
def trained(data_root, converted, tmp_path_factory):
    """A 2-iteration SoMA run started from the converted backbone, through tools/train.py."""
    work = tmp_path_factory.mktemp('trained')
    config = write_cfg(data_root, str(work / 'cfg.py'), backbone_ckpt=converted)
    assert train_api.main([config, '--work-dir', str(work)]) == 0
    return dict(config=config, work=str(work), ckpt=str(work / 'iter_2.pth'))


def test_train_options_build_the_expected_config(data_root, tmp_path):
    config = write_cfg(data_root, str(tmp_path / 'cfg.py'))
    cfg = train_api.build_train_config(train_api.parse_args(
        [config, '--amp', '--auto-scale-lr', '--resume', '--work-dir', str(tmp_path / 'w')]))
    assert cfg.optim_wrapper.type == ('AmpOptimWrapper' if torch.cuda.is_available()
                                      else 'AutocastOptimWrapper')  # CPU: bf16, no scaler
    assert cfg.auto_scale_lr == dict(enable=True, base_batch_size=2)
    assert cfg.resume is True and cfg.load_from is None
    assert cfg.work_dir == str(tmp_path / 'w')
    assert cfg.default_scope == 'mmseg'
    ckpt = tmp_path / 'some.pth'
    ckpt.write_bytes(b'')
    cfg = train_api.build_train_config(train_api.parse_args([config, '--resume', str(ckpt)]))
    assert cfg.resume is True and cfg.load_from == str(ckpt)


def test_train_writes_checkpoints_and_metrics(trained):
    ckpt = load_checkpoint_file(trained['ckpt'])
    assert any(k.startswith('backbone.model.') and 'lora_A' in k for k in ckpt['state_dict'])
    assert ckpt['meta']['soma']['semantics'] == 'residual'


def test_test_full_checkpoint_then_adapter_only_with_backbone(trained, converted, tmp_path):
    from soma.checkpoints import extract_soma_weights
    full = test_api.test([trained['config'], trained['ckpt'], '--work-dir', str(tmp_path / 'a'),
                          '--show-dir', str(tmp_path / 'vis'), '--out', str(tmp_path / 'out')])
    assert {'fog_mIoU', 'night_mIoU', 'mean_mIoU'} <= set(full)
    images = os.listdir(tmp_path / 'vis' / 'vis_data' / 'vis_image')
    assert len(images) == 4 and all(i.endswith('.png') for i in images)  # 2 fog + 2 night
    labels = sorted(os.listdir(tmp_path / 'out'))
    assert len(labels) == 4 and labels[0].startswith('fog_')
    adapter = str(tmp_path / 'adapter.pth')
    save_checkpoint_file(extract_soma_weights(load_checkpoint_file(trained['ckpt'])), adapter)
    sd = load_checkpoint_file(adapter)['state_dict']
    assert not any(k.endswith('attn.q.weight') for k in sd)  # adapter-only
    merged = test_api.test([trained['config'], adapter, '--backbone', converted,
                            '--work-dir', str(tmp_path / 'b')])
    assert merged == full


def test_tta(trained, tmp_path):
    metrics = test_api.test([trained['config'], trained['ckpt'], '--tta',
                             '--work-dir', str(tmp_path)])
    assert 'mean_mIoU' in metrics


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_dist_train_two_cpu_processes(data_root, tmp_path):
    work = tmp_path / 'dist'
    config = write_cfg(data_root, str(work / 'cfg.py'), iters=2)
    env = dict(os.environ, PORT=str(_free_port()), PYTHON=sys.executable, OMP_NUM_THREADS='1')
    proc = subprocess.run(['bash', osp.join(REPO, 'tools', 'dist_train.sh'), config, '2',
                           '--work-dir', str(work)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert osp.isfile(work / 'iter_2.pth')
    logs = proc.stdout + proc.stderr
    assert 'Distributed training: True' in logs and 'GPU number: 2' in logs  # world size
    assert "dist_cfg: {'backend': 'gloo'}" in logs


def _cli_error(capsys, fn, argv):
    assert fn(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: ')
    return err[0]


def test_bad_input_gives_one_line_errors(data_root, trained, tmp_path, capsys):
    # missing data root
    config = write_cfg(str(tmp_path / 'nowhere'), str(tmp_path / 'missing' / 'cfg.py'))
    err = _cli_error(capsys, train_api.main, [config])
    assert 'data_root' in err and 'nowhere' in err
    # a config naming an unknown type
    config = write_cfg(data_root, str(tmp_path / 'unknown' / 'cfg.py'),
                       **{'model.type': 'NoSuchSegmentor'})
    err = _cli_error(capsys, train_api.main, [config, '--work-dir', str(tmp_path / 'u')])
    assert 'NoSuchSegmentor' in err
    # a checkpoint of another architecture (wider head; narrower ViT)
    other = write_cfg(data_root, str(tmp_path / 'other' / 'cfg.py'),
                      **{'model.decode_head.channels': 32})
    err = _cli_error(capsys, test_api.main, [other, trained['ckpt'], '--work-dir',
                                             str(tmp_path / 'o')])
    assert 'iter_2.pth' in err and 'mismatch' in err and 'decode_head' in err
    other = write_cfg(data_root, str(tmp_path / 'other2' / 'cfg.py'),
                      **{'model.backbone.embed_dim': 32, 'model.decode_head.in_channels': 32})
    err = _cli_error(capsys, test_api.main, [other, trained['ckpt'], '--work-dir',
                                             str(tmp_path / 'o2')])
    assert 'iter_2.pth' in err
    # missing files
    err = _cli_error(capsys, test_api.main, [trained['config'], str(tmp_path / 'none.pth')])
    assert 'none.pth' in err
    err = _cli_error(capsys, train_api.main, [str(tmp_path / 'none.py')])
    assert 'none.py' in err


def test_two_runs_of_one_config_in_one_second_get_their_own_visualizer(tmp_path, monkeypatch):
    """mmengine names a config's default visualizer after the config file and the second the
    run started: a second run in the same second got the first one back, whose ``vis_data``
    folder the first run's clean-up had removed (a bad input: TidyRunner), and failed."""
    import shutil
    import time

    from mmengine.runner import Runner

    from soma.apis.launch import load_config
    real_strftime = time.strftime
    monkeypatch.setattr(time, 'strftime', lambda fmt, *args: '20000101_000000'
                        if fmt == '%Y%m%d_%H%M%S' else real_strftime(fmt, *args))
    config = osp.join(osp.dirname(__file__), 'tiny_seg_config.py')  # it names no visualizer
    log_dirs = []
    for _ in range(2):
        cfg = load_config(config)
        cfg.work_dir = str(tmp_path / 'w')
        runner = Runner.from_cfg(cfg)
        assert osp.isfile(osp.join(runner.log_dir, 'vis_data', 'config.py'))
        log_dirs.append(runner.log_dir)
        shutil.rmtree(runner.log_dir)  # as TidyRunner removes a run a bad input stopped
    assert log_dirs[0] == log_dirs[1]  # the same second indeed
