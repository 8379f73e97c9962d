"""Build a segmentor from a config, load (adapter) weights through the checks, and run it.

    model = init_model('configs/soma/soma_dinov2-L_mask2former.py',
                       'checkpoints/soma_checkpoints/soma_dinov2-L_g2cbm_best.pth',
                       backbone='checkpoints/dinov2_sora_converted.pth')
    result = inference_model(model, 'demo.png')          # SegDataSample
    paths = visualize(model, ['a.png', 'b.png'], 'work_dirs/vis')

Weights load through :func:`soma.checkpoints.load_soma_checkpoint`: an adapter-only
checkpoint needs ``backbone`` (a converted DINOv2) and gets a clear error otherwise.
"""
import argparse
import copy
import os
import os.path as osp
from typing import List, Optional, Sequence, Union

import mmcv
import numpy as np
import torch
from mmengine.config import Config
from mmengine.dataset import Compose, pseudo_collate
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import init_default_scope
from mmengine.utils import ProgressBar
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from mmseg.utils import get_classes
from torch import nn

from soma.apis.launch import as_config, config_keys_named
from soma.checkpoints import load_soma_checkpoint
from soma.checkpoints.layout import CheckpointLike, Device, PathLike
from soma.deploy.runtime import colorize, write_png  # numpy/opencv only: shared with ONNX
from soma.utils.cli import ArgumentParser, InputsFailed, run_cli

__all__ = ['init_model', 'inference_model', 'without_annotations', 'test_pipeline_of',
           'colorize', 'read_image', 'visualize', 'parse_args', 'main', 'CITYSCAPES_PALETTE']

# Cityscapes train-id palette (19 classes), RGB
CITYSCAPES_PALETTE = [
    [128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153],
    [153, 153, 153], [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152],
    [70, 130, 180], [220, 20, 60], [255, 0, 0], [0, 0, 142], [0, 0, 70], [0, 60, 100],
    [0, 80, 100], [0, 0, 230], [119, 11, 32]]


def _dataset_meta(ckpt, num_classes):
    meta = (ckpt or {}).get('meta') or {}
    if isinstance(meta.get('dataset_meta'), dict) and meta['dataset_meta'].get('classes'):
        dataset_meta = dict(meta['dataset_meta'])
        dataset_meta.setdefault('palette', _palette(len(dataset_meta['classes'])))
        return dataset_meta
    if num_classes == len(CITYSCAPES_PALETTE):
        return dict(classes=tuple(get_classes('cityscapes')), palette=CITYSCAPES_PALETTE)
    return dict(classes=tuple(f'class_{i}' for i in range(num_classes)),
                palette=_palette(num_classes))


def _palette(n):
    palette = [list(c) for c in CITYSCAPES_PALETTE[:n]]
    rng = np.random.RandomState(42)
    while len(palette) < n:
        palette.append(rng.randint(0, 256, 3).tolist())
    return palette


def init_model(config: Union[PathLike, Config, dict], checkpoint: Optional[CheckpointLike] = None,
               device: Device = 'cpu', backbone: Optional[CheckpointLike] = None,
               cfg_options: Optional[dict] = None,
               check_fingerprint: bool = True) -> nn.Module:
    """Build the segmentor of ``config`` (mmseg scope) and load its weights.

    Args:
        config: config path, ``mmengine.Config`` or dict.
        checkpoint: full or adapter + head checkpoint (``.pth``/``.safetensors``; the
            release's Co-DETR key names are renamed to ours); checked against the model
            first (:func:`soma.checkpoints.check_checkpoint_for_model`).
        device: where the model goes.
        backbone: converted DINOv2 checkpoint, merged into an adapter-only ``checkpoint``;
            without ``checkpoint`` it initialises the backbone (and the adapters) and leaves
            the head random.
        cfg_options: overrides merged into the config.
        check_fingerprint: refuse a ``backbone`` other than the one an adapter checkpoint
            was trained on (:mod:`soma.checkpoints.fingerprint`).
    Returns:
        The model in eval mode, with ``model.cfg`` and ``model.dataset_meta``.
    """
    cfg = as_config(config, cfg_options)
    if not isinstance(cfg.get('model'), dict):
        raise ValueError(f'{_config_name(config)}: no model in the config')
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.pop('pretrained', None)
    model_cfg['train_cfg'] = None
    backbone_cfg = model_cfg.get('backbone') or {}
    if checkpoint is not None or backbone is None:
        backbone_cfg['init_cfg'] = None  # weights come from the checkpoint (or stay random)
    else:
        backbone_cfg['init_cfg'] = dict(type='Pretrained', checkpoint=os.fspath(backbone))
    with config_keys_named(dict(model=model_cfg), cfg_options):
        model = MODELS.build(model_cfg)
    ckpt = None
    if checkpoint is not None:
        ckpt = load_soma_checkpoint(model, checkpoint, backbone=backbone, cfg=cfg,
                                    check_fingerprint=check_fingerprint)
    else:
        model.init_weights()
    if torch.device(device).type == 'cpu':
        model = revert_sync_batchnorm(model)
    model.cfg = cfg
    num_classes = getattr(getattr(model, 'decode_head', None), 'num_classes', 19)
    model.dataset_meta = _dataset_meta(ckpt, num_classes)
    model.to(device)
    model.eval()
    return model


def _config_name(config):
    return os.fspath(config) if isinstance(config, (str, os.PathLike)) else 'the config'


def _find_pipeline(node):
    """The first ``pipeline`` in a (possibly concatenated) dataset config."""
    if isinstance(node, dict):
        if node.get('pipeline'):
            return node['pipeline']
        for child in ([node.get('dataset')] + list(node.get('datasets') or [])):
            found = _find_pipeline(child)
            if found:
                return found
    return None


def without_annotations(pipeline: Sequence[dict]) -> List[dict]:
    """Copies of ``pipeline``'s transforms without ``LoadAnnotations`` (also inside
    ``TestTimeAug``): the pipeline for images that have no labels."""
    kept = []
    for t in copy.deepcopy(list(pipeline)):
        if t.get('type') == 'LoadAnnotations':
            continue
        t = dict(t)
        if t.get('type') == 'TestTimeAug':
            groups = [[a for a in group if a.get('type') != 'LoadAnnotations']
                      for group in t['transforms']]
            t['transforms'] = [g for g in groups if g]
        kept.append(t)
    return kept


def test_pipeline_of(cfg: Config, for_arrays: bool = False) -> List[dict]:
    """The inference pipeline: ``cfg.test_pipeline``, else the test dataset's, without labels."""
    pipeline = cfg.get('test_pipeline') or _find_pipeline(
        (cfg.get('test_dataloader') or {}).get('dataset')) or [
            dict(type='LoadImageFromFile'), dict(type='PackSegInputs')]
    pipeline = without_annotations(pipeline)
    if for_arrays:
        pipeline[0]['type'] = 'LoadImageFromNDArray'
    return pipeline


def _tta_pipeline(cfg, for_arrays=False):
    default = [dict(type='LoadImageFromFile'), dict(
        type='TestTimeAug',
        transforms=[[dict(type='RandomFlip', prob=0., direction='horizontal'),
                     dict(type='RandomFlip', prob=1., direction='horizontal')],
                    [dict(type='PackSegInputs')]])]
    pipeline = without_annotations(cfg.get('tta_pipeline') or default)
    if for_arrays:
        pipeline[0]['type'] = 'LoadImageFromNDArray'
    return pipeline


def inference_model(model: nn.Module,
                    images: Union[str, np.ndarray, Sequence[Union[str, np.ndarray]]],
                    tta: bool = False) -> Union[SegDataSample, List[SegDataSample]]:
    """Predict image files or HxWx3 BGR arrays; one ``SegDataSample`` or a list of them.

    ``tta``: average the softmax over the config's ``tta_pipeline`` (multi-scale + flip; a
    flip-only default when the config has none) with mmseg's ``SegTTAModel``.
    """
    is_batch = isinstance(images, (list, tuple))
    images = list(images) if is_batch else [images]
    for img in images:
        if not isinstance(img, np.ndarray) and not osp.isfile(img):
            raise FileNotFoundError(f'image not found: {img}')
    arrays = isinstance(images[0], np.ndarray)
    cfg = model.cfg
    pipeline = Compose(_tta_pipeline(cfg, arrays) if tta else test_pipeline_of(cfg, arrays))
    runner = MODELS.build(dict(type='SegTTAModel', module=model)) if tta else model
    results = []
    for img in images:  # one at a time: images of different sizes cannot share a batch
        sample = pipeline(dict(img=img) if arrays else dict(img_path=img))
        data = pseudo_collate([sample]) if tta else dict(
            inputs=[sample['inputs']], data_samples=[sample['data_samples']])
        with torch.no_grad():
            results.extend(runner.test_step(data))
    return results if is_batch else results[0]


def read_image(path: PathLike) -> np.ndarray:
    """The image file ``path`` as an HxWx3 BGR uint8 array (what ``LoadImageFromFile``
    gives); an error naming the file when it is missing, empty or not an image."""
    path = os.fspath(path)
    if not osp.exists(path):
        raise FileNotFoundError(f'{path}: image not found')
    if not osp.isfile(path):
        raise IsADirectoryError(f'{path}: a folder, not an image file')
    with open(path, 'rb') as f:
        data = f.read()
    if not data:
        raise ValueError(f'{path}: empty file (0 bytes), not an image')
    img = mmcv.imfrombytes(data)
    if img is None:
        raise ValueError(f'{path}: not an image (cannot decode its {len(data)} bytes)')
    return img


def visualize(model: nn.Module, images: Sequence[str], save_dir: PathLike, tta: bool = False,
              palette: Optional[Sequence[Sequence[int]]] = None, progress: bool = True
              ) -> List[str]:
    """Write ``<save_dir>/<image stem>.png``: the input and its colour-coded prediction side
    by side (Cityscapes palette unless the checkpoint named another). Returns the paths.

    An image that cannot be read (missing, empty, not an image) or whose output name another
    image already took does not stop the others: they are all written, then
    :class:`~soma.utils.cli.InputsFailed` names the bad ones (``.done``: the paths written).
    """
    palette = palette or model.dataset_meta.get('palette') or CITYSCAPES_PALETTE
    bar = ProgressBar(len(images)) if progress else None
    written, failed = {}, []
    for img in images:
        path = osp.join(save_dir, osp.splitext(osp.basename(img))[0] + '.png')
        try:
            if path in written:
                raise ValueError(f'{img}: its output {path} is already written for '
                                 f'{written[path]}')
            bgr = read_image(img)
        except (OSError, ValueError) as e:
            failed.append((img, str(e)))
        else:
            label = inference_model(model, bgr, tta=tta).pred_sem_seg.data[0].cpu().numpy()
            side_by_side = np.concatenate([bgr, colorize(label, palette)[..., ::-1]], axis=1)
            write_png(path, np.ascontiguousarray(side_by_side))
            written[path] = img
        if bar is not None:
            bar.update()
    if bar is not None:
        print()
    if failed:
        raise InputsFailed(failed, done=list(written), what='images')
    return list(written)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The command line of ``tools/visualize.py``."""
    parser = ArgumentParser(description='Visualise SoMA segmentation predictions')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='full or adapter + head checkpoint')
    parser.add_argument('images', nargs='+', help='image files')
    parser.add_argument('--backbone', default=None,
                        help='converted DINOv2 checkpoint for an adapter-only checkpoint')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation')
    parser.add_argument('--save_dir', '--save-dir', dest='save_dir', default='work_dirs/vis')
    parser.add_argument('--device', default='cpu')
    parser.add_cfg_options()
    return parser.parse_args(argv)


def _visualize_cli(args):
    model = init_model(args.config, args.checkpoint, device=args.device,
                       backbone=args.backbone, cfg_options=args.cfg_options)
    try:
        paths = visualize(model, args.images, args.save_dir, tta=args.tta)
    except InputsFailed as e:
        if e.done:
            print(f'{len(e.done)} images written to {args.save_dir}')
        raise
    print(f'{len(paths)} images written to {args.save_dir}')


def main(argv: Optional[List[str]] = None) -> int:
    """``tools/visualize.py``: exit code 0, or 1 with one ``error:`` line (naming every image
    that could not be read, after the others were written)."""
    return run_cli(_visualize_cli, parse_args(argv))
