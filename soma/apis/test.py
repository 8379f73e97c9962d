"""Evaluation entry point (``tools/test.py``) over mmengine's Runner.

    python tools/test.py CONFIG CHECKPOINT [--backbone CONVERTED] [--tta] [--out DIR]
                         [--submit DIR] [--show-dir DIR] [--work-dir DIR] [--amp]
                         [--cfg-options k=v ...] [--launcher pytorch]

The checkpoint is read with ``soma.utils.checkpoint_io`` (weights-only; ``.pth`` or
``.safetensors``) and checked against the model built from the config before it is loaded
(:func:`soma.checkpoints.load_soma_checkpoint`: one-line errors for a checkpoint of
another architecture, resolution or adapter rank). ``--backbone``: an adapter/head-only
checkpoint (a released ``soma_dinov2-L_*_best.pth`` or one extracted from this project) is
merged with the converted backbone (its keys go under ``backbone.model.``) when loaded,
respecting the adapter semantics it records; for an ``HFVisionBackbone`` the converted
backbone is the transformers folder of the config (``model=<folder>``). A detector checkpoint
in the release's legacy Co-DETR key names (``soma_dinov2-L_dgod_best.pth``) is renamed on load
(:mod:`soma.checkpoints.legacy_codetr`). ``--show-dir``: coloured predictions (next to
the ground truth) are written under ``DIR/vis_data/vis_image/`` (segmentation) or to
``DIR`` (detection). ``--out``: predicted train-id maps as PNG files in ``DIR``
(``<image stem>.png``, segmentation) or a ``.pkl`` of the results (detection). ``--submit``
(segmentation): a benchmark-server submission of an unlabelled test split (the metric is
skipped, no label folder is needed): one PNG of Cityscapes label ids per test image in
``DIR``, named after the image, and ``DIR.zip`` to upload
(:class:`soma.evaluation.SegPredictionWriter`). ``--amp``: the test runs under autocast, bfloat16
where supported, else float16 (:func:`soma.apis.launch.amp_autocast`).
"""
import argparse
from typing import List, Optional, Union

from mmdet.evaluation import DumpDetResults
from mmengine.config import Config
from mmengine.model import is_model_wrapper
from soma.apis.inference import without_annotations
from soma.apis.launch import (amp_autocast, check_data_roots, config_keys_named, cpu_threads,
                              leaf_datasets, load_config, run_cli, set_work_dir, setup_launcher)
from soma.checkpoints import load_soma_checkpoint
from soma.engine import TidyRunner
from soma.utils.cli import ArgumentParser

__all__ = ['parse_args', 'build_test_config', 'test', 'main']


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The command line of ``tools/test.py``."""
    parser = ArgumentParser(description='Test a SoMA segmentor/detector')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file (full, or adapter+head with '
                                           '--backbone)')
    parser.add_argument('--backbone', help='converted DINOv2 backbone (HFVisionBackbone: its '
                                           'transformers folder) merged into the checkpoint')
    parser.add_argument('--ignore-fingerprint', action='store_true',
                        help='with --backbone: load even when the backbone is not the one the '
                             'adapter was trained on (its recorded fingerprint differs)')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation '
                                                           '(tta_model/tta_pipeline of the config)')
    parser.add_argument('--out', help='segmentation: folder for predicted train-id PNGs; '
                                      'detection: results .pkl file')
    parser.add_argument('--submit', metavar='DIR',
                        help='segmentation: write a test-server submission (Cityscapes label-id '
                             'PNGs in DIR and DIR.zip) instead of computing the metric; the '
                             'test split needs no labels')
    parser.add_argument('--show-dir', help='folder for coloured prediction images')
    parser.add_argument('--show', action='store_true', help='show predictions in a window')
    parser.add_argument('--wait-time', type=float, default=2, help='--show interval (s)')
    parser.add_argument('--work-dir', help='folder for the logs and metrics')
    parser.add_argument('--amp', action='store_true',
                        help='mixed precision: autocast to bfloat16 where supported, else float16')
    parser.add_cfg_options()
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser.parse_args(argv)


def _is_det(cfg):
    return cfg.get('default_scope') == 'mmdet'


def _enable_tta(cfg, config_path):
    if not cfg.get('tta_model') or not cfg.get('tta_pipeline'):
        raise ValueError(f'{config_path}: --tta needs tta_model and tta_pipeline in the config')
    for dataset in leaf_datasets(cfg.test_dataloader.dataset):
        dataset['pipeline'] = cfg.tta_pipeline
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model


def _enable_visualization(cfg, args, config_path):
    hook = cfg.get('default_hooks', {}).get('visualization')
    if hook is None:
        raise ValueError(f'{config_path}: --show/--show-dir need default_hooks.visualization')
    hook['draw'] = True
    hook['interval'] = 1  # every test image (mmseg's hook draws every 50th by default)
    if args.show:
        hook['show'] = True
        hook['wait_time'] = args.wait_time
    if args.show_dir:
        if _is_det(cfg):
            hook['test_out_dir'] = args.show_dir
        else:
            cfg.visualizer['save_dir'] = args.show_dir


def _without_labels(cfg):
    """Test without labels (``--submit``): no ``LoadAnnotations`` in the test pipelines."""
    for dataset in leaf_datasets(cfg.test_dataloader.dataset):
        dataset['pipeline'] = without_annotations(dataset.get('pipeline') or [])


def build_test_config(args: argparse.Namespace) -> Config:
    """The Config to test with from the parsed arguments (no Runner yet)."""
    cfg = load_config(args.config, args.cfg_options, args.launcher)
    set_work_dir(cfg, args.work_dir)
    if args.show or args.show_dir:
        _enable_visualization(cfg, args, args.config)
    if args.tta:
        _enable_tta(cfg, args.config)
    if _is_det(cfg):
        if args.submit:
            raise ValueError(f'{args.config}: --submit writes segmentation label maps; this is a '
                             f'detection config')
        if args.out and not args.out.endswith(('.pkl', '.pickle')):
            raise ValueError(f'--out must be a .pkl file for detection, got {args.out}')
    elif args.submit:
        _without_labels(cfg)
        cfg.test_evaluator = dict(type='SegPredictionWriter', train_id_dir=args.out,
                                  label_id_dir=args.submit)
    elif args.out:
        evaluator = cfg.test_evaluator
        cfg.test_evaluator = (list(evaluator) if isinstance(evaluator, list) else [evaluator]) + [
            dict(type='SegPredictionWriter', train_id_dir=args.out)]
    cfg.load_from = None  # loaded (checked, merged) by test() instead
    setup_launcher(cfg)
    return cfg


def test(args: Union[argparse.Namespace, List[str]]) -> dict:
    """Build the Runner, load the checkpoint (merged with ``--backbone``), test; return metrics."""
    if not isinstance(args, argparse.Namespace):
        args = parse_args(args)
    cfg = build_test_config(args)
    check_data_roots(cfg, ('test_dataloader', ), labels=not args.submit)
    with config_keys_named(cfg, args.cfg_options):
        runner = TidyRunner.from_cfg(cfg)
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        if args.tta:
            model = model.module
        with runner.until_started():  # a bad checkpoint leaves no run folder
            load_soma_checkpoint(model, args.checkpoint, backbone=args.backbone, cfg=cfg,
                                 config_path=args.config,
                                 check_fingerprint=not getattr(args, 'ignore_fingerprint',
                                                               False))
        runner.logger.info(f'loaded {args.checkpoint}' + (
            f' merged with the backbone {args.backbone}' if args.backbone else ''))
        if args.out and _is_det(cfg):
            runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
        with amp_autocast(getattr(args, 'amp', False)), cpu_threads(cfg):
            return runner.test()


def main(argv: Optional[List[str]] = None) -> int:
    """``tools/test.py``: test, one-line errors, exit code."""
    return run_cli(test, parse_args(argv))
