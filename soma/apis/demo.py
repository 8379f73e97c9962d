"""The demo (``make demo``): train SoMA on a synthetic source domain, test on two shifted ones.

    python tools/demo.py --work-dir work_dirs/demo [--iters N]

1. writes the synthetic benchmark to ``WORK_DIR/data`` (skipped when already there);
2. checks for pretrained weights (the tiny demo ViT has none: it says so and goes on);
3. trains ``configs/demo/soma_tiny_demo.py`` on the source (``gta``) on the CPU;
4. evaluates the last checkpoint on the targets (``fog``, ``night``) with ``DGIoUMetric``,
   writes coloured predictions to ``WORK_DIR/predictions/vis_data/vis_image/`` and prints
   the per-domain mIoU table.
"""
import copy
import os
import os.path as osp
import time
from typing import List, Optional

import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmseg.registry import MODELS

from soma.apis.launch import (check_max_iters, cpu_threads, leaf_datasets, run_cli, set_max_iters,
                              unique_visualizer_name)
from soma.apis.test import parse_args as parse_test_args
from soma.apis.test import test
from soma.checkpoints.layout import PathLike
from soma.datasets import make_synthetic_dg_benchmark
from soma.utils.checkpoint_io import save_checkpoint_file
from soma.utils.cli import ArgumentParser
from soma.utils.run_lock import work_dir_lock

__all__ = ['DEMO_CONFIG', 'BACKBONE_FILE', 'demo_config', 'set_image_size',
           'write_demo_backbone', 'run_demo', 'main']

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO_CONFIG = osp.join(REPO_ROOT, 'configs', 'demo', 'soma_tiny_demo.py')
NO_PRETRAINED = ('no pretrained weights: the backbone starts from random initialisation, '
                 'numbers are only a smoke test of the pipeline')
BACKBONE_FILE = 'backbone.pth'  # WORK_DIR/backbone.pth: the demo's "converted backbone"


def set_image_size(cfg: Config, size: int) -> Config:
    """Scale the demo config to ``size`` x ``size`` crops (backbone, pipelines, preprocessor)."""
    cfg.crop_size = (size, size)
    cfg.model.backbone.img_size = size
    cfg.model.data_preprocessor.size = (size, size)
    pipelines = [d['pipeline'] for loader in ('train_dataloader', 'val_dataloader',
                                              'test_dataloader') if cfg.get(loader)
                 for d in leaf_datasets(cfg[loader]['dataset'])]
    if cfg.get('test_pipeline'):  # what init_model / inference_model use
        pipelines.append(cfg.test_pipeline)
    for pipeline in pipelines:
        for t in pipeline:
            if t['type'] == 'RandomChoiceResize':
                t['scales'] = [int(size * x * 0.1) for x in range(8, 16)]
                t['max_size'] = 4 * size
            elif t['type'] == 'RandomCrop':
                t['crop_size'] = (size, size)
            elif t['type'] == 'Resize' and 'scale' in t:
                t['scale'] = (size, size)
    return cfg


def demo_config(data_root: PathLike, work_dir: PathLike, max_iters: Optional[int] = None,
                config: PathLike = DEMO_CONFIG, val: bool = True, image_size: Optional[int] = None
                ) -> Config:
    """The demo config pointed at ``data_root`` (made by ``make_synthetic_dg_benchmark``)."""
    cfg = Config.fromfile(config)
    data_root = osp.abspath(os.fspath(data_root))
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        for dataset in leaf_datasets(cfg[loader]['dataset']) if cfg.get(loader) else []:
            dataset['data_root'] = osp.join(data_root, osp.basename(dataset['data_root']))
    cfg.data_root = data_root
    cfg.work_dir = os.fspath(work_dir)
    unique_visualizer_name(cfg)
    if image_size:
        set_image_size(cfg, image_size)
    set_max_iters(cfg, max_iters, val=val)
    return cfg


def write_demo_backbone(cfg: Config, path: PathLike, seed: int = 0) -> str:
    """Write the random initialisation of the config's backbone (no adapters) to ``path``
    and point the backbone's ``init_cfg`` at it: the demo then trains as a real run does,
    from a converted backbone that extract / merge / spectrum take (``--backbone_ckpt``)."""
    backbone_cfg = copy.deepcopy(cfg.model.backbone)
    for key in ('lora_cfg', 'peft_cfg', 'init_cfg'):
        backbone_cfg.pop(key, None)
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        backbone = MODELS.build(backbone_cfg)
    save_checkpoint_file(backbone.state_dict(), path)
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=os.fspath(path))
    return os.fspath(path)


def _pretrained_checkpoint(cfg):
    init_cfg = cfg.model.backbone.get('init_cfg') or {}
    path = init_cfg.get('checkpoint') if init_cfg.get('type') == 'Pretrained' else None
    return path if path and osp.isfile(path) else None


def run_demo(work_dir: PathLike = 'work_dirs/demo', max_iters: Optional[int] = None,
             num_train: int = 64, num_val: int = 12, image_size: int = 96, seed: int = 0) -> dict:
    """Run the whole demo; return ``{'metrics': {...}, 'seconds': {...}, 'paths': {...}}``.

    It holds the lock of its training folder (``WORK_DIR/train``) throughout, and runs with
    the demo config's ``cpu_threads`` (1) unless ``OMP_NUM_THREADS`` says otherwise.
    """
    check_max_iters(max_iters)  # before anything is written
    work_dir = osp.abspath(work_dir)
    with work_dir_lock(osp.join(work_dir, 'train')):
        return _run_demo(work_dir, max_iters, num_train, num_val, image_size, seed)


def _run_demo(work_dir, max_iters, num_train, num_val, image_size, seed):
    seconds = {}
    t0 = time.time()
    data_root = osp.join(work_dir, 'data')
    print(f'[demo] 1/4 synthetic benchmark in {data_root}')
    make_synthetic_dg_benchmark(data_root, num_train=num_train, num_val=num_val,
                                size=(image_size, image_size), seed=seed)
    seconds['data'] = time.time() - t0

    train_dir = osp.join(work_dir, 'train')
    cfg = demo_config(data_root, train_dir, max_iters, val=False)
    cfg.randomness = dict(seed=seed, deterministic=False)
    pretrained = _pretrained_checkpoint(cfg)
    if pretrained:
        print(f'[demo] 2/4 pretrained weights: {pretrained}')
    else:
        backbone = write_demo_backbone(cfg, osp.join(work_dir, BACKBONE_FILE), seed)
        print(f'[demo] 2/4 {NO_PRETRAINED}; the random backbone is saved as {backbone} '
              f'(the converted backbone the checkpoint tools take)')
    print(f'[demo] 3/4 training SoMA for {cfg.train_cfg.max_iters} iterations on the CPU '
          f'(logs in {train_dir})')
    t1 = time.time()
    with cpu_threads(cfg):
        runner = Runner.from_cfg(cfg)
        runner.train()
    seconds['train'] = time.time() - t1
    checkpoint = osp.join(train_dir, f'iter_{cfg.train_cfg.max_iters}.pth')
    del runner

    print('[demo] 4/4 evaluating on the target domains (fog, night)')
    t2 = time.time()
    config_path = osp.join(train_dir, 'demo_config.py')
    cfg.dump(config_path)
    vis_dir = osp.join(work_dir, 'predictions')
    metrics = test(parse_test_args([config_path, checkpoint, '--work-dir',
                                    osp.join(work_dir, 'test'), '--show-dir', vis_dir]))
    seconds['test'] = time.time() - t2
    seconds['total'] = time.time() - t0
    _print_summary(metrics, seconds, vis_dir)
    return dict(metrics=metrics, seconds=seconds,
                paths=dict(data=data_root, checkpoint=checkpoint, predictions=vis_dir,
                           backbone=pretrained or osp.join(work_dir, BACKBONE_FILE)))


def _print_summary(metrics, seconds, vis_dir):
    rows = [(name, metrics.get(f'{name}_mIoU')) for name in ('fog', 'night', 'mean')]
    print('\n[demo] mIoU (%) per target domain')
    print('+--------+-------+')
    print('| domain |  mIoU |')
    print('+--------+-------+')
    for name, value in rows:
        print(f'| {name:<6} | {value:5.2f} |' if value is not None else f'| {name:<6} |   n/a |')
    print('+--------+-------+')
    print(f'[demo] coloured predictions: {osp.join(vis_dir, "vis_data", "vis_image")}')
    print('[demo] time: ' + ', '.join(f'{k} {v:.0f} s' for k, v in seconds.items()))
    print(f'[demo] {NO_PRETRAINED}')


def main(argv: Optional[List[str]] = None) -> int:
    """``tools/demo.py``: run the demo, one-line errors, exit code."""
    parser = ArgumentParser(description='SoMA demo on a synthetic DG benchmark (CPU)')
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--iters', type=int, default=None,
                        help='training iterations (default: the demo config)')
    args = parser.parse_args(argv)
    return run_cli(run_demo, args.work_dir, args.iters)

