"""ONNX export entry point (``tools/deploy/export_onnx.py``).

    python tools/deploy/export_onnx.py CONFIG CHECKPOINT --shape H W --out FILE.onnx
        [--backbone CONVERTED] [--opset N] [--dynamic-batch] [--no-check]
        [--cfg-options k=v ...]

The model is built and loaded as ``tools/test.py`` does (:func:`soma.apis.inference.init_model`:
a full checkpoint, or an adapter-only one with ``--backbone``), on the CPU. Segmentors give
``image`` -> ``logits``; a Co-DETR (``DGOD/configs``) gives its ``detr`` branch as
``image`` -> ``boxes, scores, labels`` (see :mod:`soma.deploy.graphs`). What the runner needs
to reproduce ``tools/test.py`` goes into the file's metadata (:func:`deploy_metadata`).
"""
import argparse
from typing import List, Optional, Sequence, Union
import logging
import os
import os.path as osp

from mmengine.config import Config
from mmengine.logging import print_log
from torch import nn

from soma.apis.inference import init_model, test_pipeline_of
from soma.checkpoints.layout import CheckpointLike, PathLike
from soma.deploy.export import DEFAULT_OPSET, export_model, task_of
from soma.utils.cli import ArgumentParser, run_cli

__all__ = ['deploy_metadata', 'export_onnx', 'parse_args', 'main']

# the test-pipeline steps the runner reproduces (any other is recorded and warned about)
RUNNER_STEPS = ('LoadImageFromFile', 'Resize', 'PackSegInputs', 'PackDetInputs')


def _pair(value):
    return None if value is None else [int(v) for v in (
        value if isinstance(value, (list, tuple)) else (value, value))]


def _resize_of(pipeline):
    """The pipeline's ``Resize`` as the runner reads it (None when the pipeline has none)."""
    for step in pipeline:
        if step.get('type') == 'Resize':
            scale, factor = step.get('scale'), step.get('scale_factor')
            return dict(scale=_pair(scale) if scale is not None else None,
                        scale_factor=(list(factor) if isinstance(factor, (list, tuple))
                                      else factor),
                        keep_ratio=bool(step.get('keep_ratio', False)),
                        interpolation=step.get('interpolation', 'bilinear'))
    return None


def _classes(model, num_classes):
    meta = getattr(model, 'dataset_meta', None) or {}
    classes = list(meta.get('classes') or [])
    palette = [list(map(int, c)) for c in (meta.get('palette') or [])]
    if len(classes) != num_classes:
        classes = [f'class_{i}' for i in range(num_classes)]
    if len(palette) < num_classes:
        palette = palette + [[(37 * i) % 256, (97 * i) % 256, (151 * i) % 256]
                             for i in range(len(palette), num_classes)]
    return classes, palette[:num_classes]


def deploy_metadata(model: nn.Module, config: Optional[PathLike] = None,
                    checkpoint: Optional[PathLike] = None, backbone: Optional[PathLike] = None
                    ) -> dict:
    """What the runner needs (and a reader may want) about ``model`` built from its config:
    classes, palette, test mode, crop and stride, the pipeline's resize, normalisation."""
    cfg = model.cfg
    pipeline = test_pipeline_of(cfg)
    steps = [step.get('type') for step in pipeline]
    others = [s for s in steps if s not in RUNNER_STEPS]
    if others:
        print_log(f'export: the test pipeline has {others}, which the onnxruntime runner does '
                  f'not apply (it reads, resizes and normalises only)', logger='current',
                  level=logging.WARNING)
    pre = cfg.model.get('data_preprocessor') or {}
    meta = dict(
        config=osp.basename(os.fspath(config)) if config else None,
        checkpoint=osp.basename(os.fspath(checkpoint)) if checkpoint else None,
        backbone=osp.basename(os.fspath(backbone).rstrip('/')) if backbone else None,
        pipeline=steps, resize=_resize_of(pipeline),
        mean=pre.get('mean'), std=pre.get('std'),
        adapter=('soma' if cfg.model.backbone.get('lora_cfg') else
                 'peft' if cfg.model.backbone.get('peft_cfg') else None))
    if task_of(model) == 'detection':
        head = model.query_head
        meta['classes'], meta['palette'] = _classes(model, head.num_classes)
        test_cfg = dict(head.test_cfg or {})
        meta.update(max_per_img=test_cfg.get('max_per_img'),
                    score_thr=test_cfg.get('score_thr', 0),
                    nms_not_applied=test_cfg.get('nms'))
        return meta
    meta['classes'], meta['palette'] = _classes(model, model.decode_head.num_classes)
    test_cfg = dict(model.test_cfg or {})
    mode = test_cfg.get('mode', 'whole')
    meta.update(test_mode=mode, align_corners=bool(model.align_corners),
                crop_size=_pair(test_cfg.get('crop_size')) if mode == 'slide' else None,
                stride=_pair(test_cfg.get('stride')) if mode == 'slide' else None,
                slide_batch_size=test_cfg.get('slide_batch_size') or None)
    return meta


def export_onnx(config: Union[PathLike, Config, dict], checkpoint: Optional[CheckpointLike],
                out: PathLike, shape: Sequence[int], backbone: Optional[CheckpointLike] = None,
                opset: int = DEFAULT_OPSET, dynamic_batch: bool = False,
                cfg_options: Optional[dict] = None, check: bool = True) -> dict:
    """Build the model of ``config`` with ``checkpoint`` (+ ``backbone``) on the CPU and
    export it to ``out`` for ``shape`` = (H, W) inputs; the report of
    :func:`soma.deploy.export.export_model`."""
    if osp.isdir(os.fspath(out)):
        raise IsADirectoryError(f'--out {out} is a folder; give the .onnx file to write')
    model = init_model(config, checkpoint, device='cpu', backbone=backbone,
                       cfg_options=cfg_options)
    metadata = deploy_metadata(model, config, checkpoint, backbone)
    if metadata.get('test_mode') == 'slide' and list(shape) != metadata['crop_size']:
        print_log(f'export: the config infers by sliding windows of {metadata["crop_size"]}; '
                  f'the runner needs a graph of that size, not {list(shape)}',
                  logger='current', level=logging.WARNING)
    report = export_model(model, out, shape, opset, dynamic_batch, metadata, check)
    print_log(f'exported {report["task"]} model to {out} (input {shape[0]} x {shape[1]}, '
              f'batch {"free" if dynamic_batch else 1}); onnxruntime vs PyTorch: '
              f'{report["check"] or "not checked"}', logger='current')
    return report


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The command line of ``tools/deploy/export_onnx.py``."""
    parser = ArgumentParser(
        description='Export a SoMA segmentor (or the Co-DETR detr branch) to ONNX')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='full checkpoint, or adapter-only with --backbone')
    parser.add_argument('--shape', nargs=2, type=int, required=True, metavar=('H', 'W'),
                        help='input size of the graph (the crop size for slide inference)')
    parser.add_argument('--out', required=True, help='.onnx file to write')
    parser.add_argument('--backbone', help='converted backbone (HFVisionBackbone: its '
                                           'transformers folder) for an adapter-only checkpoint')
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET, help='ONNX opset (>= 16)')
    parser.add_argument('--dynamic-batch', action='store_true',
                        help='free batch dimension (default: batch 1)')
    parser.add_argument('--no-check', action='store_true',
                        help='skip the onnxruntime vs PyTorch check after export')
    parser.add_cfg_options()
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    """``tools/deploy/export_onnx.py``: export, one-line errors, exit code."""
    args = parse_args(argv)
    return run_cli(export_onnx, args.config, args.checkpoint, args.out, args.shape,
                   backbone=args.backbone, opset=args.opset, dynamic_batch=args.dynamic_batch,
                   cfg_options=args.cfg_options, check=not args.no_check)
