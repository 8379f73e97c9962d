"""Training entry point (``tools/train.py``): mmseg/mmdet-like options over mmengine's Runner.

    python tools/train.py CONFIG [--work-dir DIR] [--iters N] [--amp] [--resume [auto|PATH]]
                          [--auto-scale-lr] [--cfg-options k=v ...] [--launcher pytorch]

``--auto-scale-lr`` scales the learning rate of every parameter group linearly by
``(GPUs x per-GPU batch) / base_batch_size`` (mmengine ``auto_scale_lr``), where
``base_batch_size`` is the total batch the release trained with: the config's
``auto_scale_lr.base_batch_size`` (4 for the 512 GTAV/Synthia/UrbanSyn configs and the
1024 G+S+U configs, 8 for Cityscapes -> B,M, 8 = 2 x 4 GPUs for ACDC and for the detector);
a config without one is taken to be a single-GPU recipe (its per-GPU batch). So on 2 GPUs
with the per-GPU batch of a single-GPU release you get 2x the released learning rate.
Without the flag the configured learning rate is used as is. ``--amp``: bfloat16 autocast
(CPU, GPUs that support it) or float16 with dynamic loss scaling
(:func:`soma.apis.launch.enable_amp`). ``--iters N``: train N iterations with the whole
schedule rescaled to fit (:func:`soma.apis.launch.set_max_iters`; ``--cfg-options
train_cfg.max_iters=N`` alone leaves the schedulers at the config's length, with a warning).

One training per work dir: the run holds ``WORK_DIR/train.lock`` (:mod:`soma.utils.run_lock`);
a second training there stops at once naming the first one's pid. Torch uses
:func:`soma.apis.launch.cpu_thread_count` CPU threads (``OMP_NUM_THREADS``, else the config's
``cpu_threads``, else the free cores).
"""
import argparse
import contextlib
import logging
import os.path as osp
from typing import List, Optional, Union

from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from soma.apis.launch import (check_data_roots, check_max_iters, config_keys_named,
                              cpu_threads, enable_amp, launch_rank, load_config,
                              param_schedulers, run_cli, set_max_iters, set_work_dir,
                              setup_launcher)
from soma.engine import TidyRunner
from soma.engine.checkpoint_hook import find_resumable_checkpoint
from soma.utils.cli import ArgumentParser
from soma.utils.run_lock import work_dir_lock

__all__ = ['parse_args', 'build_train_config', 'use_safe_checkpoints', 'train', 'main']


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The command line of ``tools/train.py``."""
    parser = ArgumentParser(description='Train a segmentor/detector with SoMA')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--iters', type=int, default=None,
                        help='training iterations, every scheduler, interval and EMA start '
                             'rescaled to fit (default: the config\'s)')
    parser.add_argument('--amp', action='store_true',
                        help='mixed precision: bfloat16 autocast where supported (CPU, recent '
                             'GPUs), else float16 with dynamic loss scaling')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from the latest checkpoint of the work dir (no value or "auto") or '
             'from the given checkpoint')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by the actual total batch / the release batch')
    parser.add_cfg_options()
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser.parse_args(argv)


def _warn_schedule_beyond_run(cfg):
    """A scheduler that ends after the last iteration (``--cfg-options train_cfg.max_iters``
    alone) never reaches its end values; say so."""
    max_iters = check_max_iters((cfg.get('train_cfg') or {}).get('max_iters'),
                                'train_cfg.max_iters')
    for scheduler in param_schedulers(cfg):
        end = scheduler.get('end')
        if max_iters and not scheduler.get('by_epoch', True) and end and end > max_iters:
            print_log(f'param_scheduler {scheduler.get("type")} ends at iteration {end}, after '
                      f'train_cfg.max_iters={max_iters}: it is cut short; use --iters '
                      f'{max_iters} to rescale the whole schedule', logger='current',
                      level=logging.WARNING)


def build_train_config(args: argparse.Namespace) -> Config:
    """The Config to train from the parsed arguments (no Runner yet)."""
    cfg = load_config(args.config, args.cfg_options, args.launcher)
    set_work_dir(cfg, args.work_dir)
    if args.iters is not None:
        set_max_iters(cfg, args.iters)
    _warn_schedule_beyond_run(cfg)
    if args.amp:
        enable_amp(cfg)
    if args.resume == 'auto':  # the newest complete checkpoint (none: start from scratch)
        cfg.resume = True
        cfg.load_from = find_resumable_checkpoint(cfg.work_dir)
    elif args.resume is not None:
        if not osp.isfile(args.resume):
            raise FileNotFoundError(f'--resume: checkpoint not found: {args.resume}')
        cfg.resume = True
        cfg.load_from = args.resume
    if args.auto_scale_lr:
        scale = cfg.get('auto_scale_lr') or {}
        if 'base_batch_size' not in scale:
            scale['base_batch_size'] = cfg.train_dataloader.batch_size
            print_log(f'auto_scale_lr: the config has no base_batch_size; assuming a single-GPU '
                      f'release, base_batch_size={scale["base_batch_size"]}', logger='current',
                      level=logging.WARNING)
        scale['enable'] = True
        cfg.auto_scale_lr = scale
    use_safe_checkpoints(cfg)
    setup_launcher(cfg)
    return cfg


def use_safe_checkpoints(cfg: Config) -> Config:
    """Crash-safe checkpoint saves and checked loads for any config: a plain
    ``CheckpointHook`` becomes :class:`~soma.engine.SafeCheckpointHook` (same arguments), and
    :class:`~soma.engine.CheckpointCheckHook` checks what ``load_from`` / ``resume`` load."""
    hook = (cfg.get('default_hooks') or {}).get('checkpoint')
    if hook is not None and hook.get('type') in ('CheckpointHook', 'mmengine.CheckpointHook'):
        hook['type'] = 'SafeCheckpointHook'
        print_log('default_hooks.checkpoint: CheckpointHook -> SafeCheckpointHook (a kill or a '
                  'full disk during a save leaves the previous checkpoint)', logger='current')
    hooks = list(cfg.get('custom_hooks') or [])
    if not any(h.get('type') == 'CheckpointCheckHook' for h in hooks):
        hooks.append(dict(type='CheckpointCheckHook'))
    cfg.custom_hooks = hooks
    return cfg


def train(args: Union[argparse.Namespace, List[str]]) -> Runner:
    """Build the Runner from ``args`` (a Namespace or an argv list) and train; return it.

    The work dir's lock is taken (by the rank-0 process) before the Runner writes anything.
    A bad config value or checkpoint found before the first iteration is a one-line error
    naming the config key (:func:`soma.apis.launch.config_keys_named`) or the file, and
    leaves nothing behind (:class:`soma.engine.TidyRunner`).
    """
    if not isinstance(args, argparse.Namespace):
        args = parse_args(args)
    cfg = build_train_config(args)
    check_data_roots(cfg, ('train_dataloader', 'val_dataloader'))
    lock = work_dir_lock(cfg.work_dir) if launch_rank() == 0 else contextlib.nullcontext()
    with lock, cpu_threads(cfg), config_keys_named(cfg, args.cfg_options):
        runner = TidyRunner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
        runner.train()
    return runner


def main(argv: Optional[List[str]] = None) -> int:
    """``tools/train.py``: train, one-line errors, exit code."""
    return run_cli(train, parse_args(argv))
