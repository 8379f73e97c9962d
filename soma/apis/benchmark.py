"""Inference speed of a segmentor: adapters unmerged, merged, and the plain backbone.

    python tools/benchmark.py CONFIG [CHECKPOINT] [--backbone CONVERTED] [--shape 512 512]
                              [--batch 1] [--repeat 20] [--warmup 3] [--device cuda]
                              [--out work_dirs/benchmark.json] [--cfg-options k=v ...]

Three copies of the same model are timed in one run, round-robin (so drifts of the machine
hit all three alike), on a random ``batch x 3 x H x W`` input. What is timed is mmseg's
whole-image inference without post-processing, :func:`forward_logits`
(``model.encode_decode``: backbone, neck, head, the head's own resize to the input size),
which every head takes (Mask2Former's needs the image metas, built here):

* ``unmerged``: the adapters as trained (SoMA: ``x W^T + b + s (x A^T) B^T``; a ``peft``
  adapter the same way through peft's layers);
* ``merged``: ``merge_and_unload``: ``s B @ A`` folded in, plain ``nn.Linear``;
* ``plain``: the same network with plain ``nn.Linear`` layers holding the frozen weights
  (what the backbone without adapters costs).

A model without adapters (the frozen and full fine-tuning baselines) is timed once, as
``plain``. Merging adds no inference cost, so ``merged / plain`` should be ~1.0 (>= 0.98);
the merged model has exactly the plain model's layers (``merged_same_layers_as_plain``) and
the unmerged model's outputs (``max_abs_diff_merged_vs_unmerged``, float rounding). FPS
figures use the fastest of the ``repeat`` runs of each model (robust to a busy machine);
``fps_median`` and every run's time are in the result too.

:func:`init_benchmark_model` builds the model of a config for it, DINOv2 or
``HFVisionBackbone`` (DINOv3, DINOv2, SigLIP2 from transformers): for the latter
``backbone`` is a transformers folder, or only its ``config.json`` (random weights of that
architecture: the speed does not depend on them).
"""
import argparse
import copy
import json
import os
import os.path as osp
import statistics
import time
from typing import Dict, List, Optional, Tuple, Union

import torch
from mmengine.config import Config
from torch import nn

from soma.apis.inference import init_model
from soma.apis.launch import as_config
from soma.checkpoints import hf_folder_of
from soma.checkpoints.layout import CheckpointLike, Device, PathLike
from soma.models.peft_backbone import adapter_of
from soma.utils.atomic import atomic_output
from soma.utils.cli import ArgumentParser, run_cli

__all__ = ['init_benchmark_model', 'adapter_kind', 'forward_logits', 'merged_copy',
           'plain_copy', 'time_models', 'benchmark', 'parse_args', 'main']


def _hf_model_arg(backbone):
    """``HFVisionBackbone(model=...)`` for ``backbone``: a folder (its weights), or a
    ``config.json`` file (a config dict: random weights)."""
    path = os.fspath(backbone)
    if osp.isfile(path) and osp.basename(path) == 'config.json':
        with open(path, encoding='utf-8') as f:
            fields = json.load(f)
        if not isinstance(fields, dict) or 'model_type' not in fields:
            raise ValueError(f'{path}: not a transformers config (no model_type)')
        return {k: v for k, v in fields.items() if not k.startswith('_')}
    folder = hf_folder_of(path) if osp.exists(path) else None
    if folder is not None:
        return folder
    raise FileNotFoundError(f'--backbone {path}: an HFVisionBackbone config needs a '
                            f'transformers folder or its config.json')


def init_benchmark_model(config: Union[PathLike, Config, dict],
                         checkpoint: Optional[CheckpointLike] = None, device: Device = 'cpu',
                         backbone: Optional[PathLike] = None,
                         cfg_options: Optional[dict] = None) -> nn.Module:
    """:func:`soma.apis.inference.init_model` for a benchmark: with an ``HFVisionBackbone``
    config, ``backbone`` replaces ``model.backbone.model`` (a folder or a ``config.json``);
    otherwise it is the converted DINOv2, as for ``init_model``."""
    cfg = as_config(config, cfg_options)
    if not isinstance(cfg.get('model'), dict):
        raise ValueError(f'{config}: no model in the config')
    if cfg.get('default_scope', 'mmseg') != 'mmseg':
        raise ValueError(f'{config}: tools/benchmark.py times segmentors (default_scope '
                         f'mmseg), this config is {cfg.default_scope!r}')
    backbone_cfg = cfg.model.get('backbone') or {}
    if backbone_cfg.get('type') != 'HFVisionBackbone':  # cfg_options again: errors name them
        return init_model(cfg, checkpoint, device=device, backbone=backbone,
                          cfg_options=cfg_options)
    if backbone is not None:
        backbone_cfg['model'] = _hf_model_arg(backbone)
    return init_model(cfg, checkpoint, device=device)


def adapter_kind(model: nn.Module) -> Optional[str]:
    """The adapter method of the model's backbone (its meta key: 'soma' or 'peft'), or None
    (no adapters)."""
    adapter = adapter_of(getattr(model, 'backbone', None))
    return None if adapter is None else adapter.meta_key


def forward_logits(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Segmentation logits of ``inputs`` (``B x 3 x H x W``) at the input size, as mmseg's
    whole-image inference computes them (``model.encode_decode``), without post-processing.

    The image metas every head may read (Mask2Former's forward needs them) say that each
    image is the whole, unpadded input.
    """
    h, w = inputs.shape[-2:]
    metas = [dict(img_shape=(h, w), pad_shape=(h, w), ori_shape=(h, w))
             for _ in range(inputs.shape[0])]
    return model.encode_decode(inputs, metas)


def merged_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy whose backbone has the adapters merged and unloaded (plain layers).

    Its backbone is the bare network, so do not call ``train()``/``eval()`` on the PEFT
    segmentor copy (they re-apply the adapter's freezing, which needs the wrapper).
    """
    merged = copy.deepcopy(model).eval()  # eval first: the PEFT segmentor's train() re-freezes
    merged.backbone = _adapter(merged, 'merge').merge_and_unload()
    return merged


def plain_copy(model: nn.Module) -> nn.Module:
    """A copy whose backbone holds plain layers with the frozen weights only (the adapters
    taken off, not merged: what the backbone costs without them)."""
    plain = copy.deepcopy(model).eval()
    plain.backbone = _adapter(plain, 'take off').unload()
    return plain


def _adapter(model: nn.Module, what: str):
    adapter = adapter_of(getattr(model, 'backbone', None))
    if adapter is None:
        raise ValueError(f'{type(model).__name__}.backbone has no adapters to {what} (set '
                         f'backbone.lora_cfg or backbone.peft_cfg)')
    return adapter


def _count_adapted(model: nn.Module) -> int:
    adapter = adapter_of(getattr(model, 'backbone', None))
    return 0 if adapter is None else len(adapter.adapted_layers())


def time_models(models: Dict[str, nn.Module], inputs: torch.Tensor, repeat: int = 10,
                warmup: int = 2) -> Dict[str, List[float]]:
    """Round-robin timing of :func:`forward_logits`; ``{name: [seconds per forward, one per
    repeat]}``."""
    sync = torch.cuda.synchronize if inputs.is_cuda else (lambda: None)
    times = {name: [] for name in models}
    with torch.inference_mode():
        for _ in range(warmup):
            for model in models.values():
                forward_logits(model, inputs)
        sync()
        for _ in range(repeat):
            for name, model in models.items():
                sync()
                start = time.perf_counter()
                forward_logits(model, inputs)
                sync()
                times[name].append(time.perf_counter() - start)
    return times


def _structure(module):
    return [type(m).__name__ for m in module.modules()]


def _max_abs_diff(a, b, inputs):
    with torch.inference_mode():
        return (forward_logits(a, inputs) - forward_logits(b, inputs)).abs().max().item()


def benchmark(model: nn.Module, shape: Tuple[int, int] = (512, 512), batch: int = 1,
              repeat: int = 10, warmup: int = 2, out: Optional[PathLike] = None,
              device: Optional[Device] = None) -> dict:
    """FPS of ``model`` unmerged / merged / plain (plain only without adapters); writes json
    to ``out`` when given.

    ``model``: a built segmentor (e.g. from :func:`init_benchmark_model`). Returns the result
    dict (``fps``, ratios, shapes, the largest output differences between the copies).
    """
    device = device or next(model.parameters()).device
    model = model.to(device).eval()
    kind = adapter_kind(model)
    models = ({'unmerged': model, 'merged': merged_copy(model), 'plain': plain_copy(model)}
              if kind else {'plain': model})
    h, w = shape
    inputs = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(0)).to(device)
    times = time_models(models, inputs, repeat, warmup)
    best = {name: min(t) for name, t in times.items()}
    median = {name: statistics.median(t) for name, t in times.items()}
    fps = {name: batch / s for name, s in best.items()}
    result = dict(
        adapter=kind,
        fps=fps,
        fps_median=({name: batch / s for name, s in median.items()}),
        seconds_per_forward=times,
        adapted_layers=_count_adapted(model),
        params=sum(p.numel() for p in model.parameters()),
        shape=[h, w], batch=batch, repeat=repeat, warmup=warmup, device=str(device),
        torch=torch.__version__, threads=torch.get_num_threads())
    if kind:
        result.update(
            ratio_merged_vs_plain=fps['merged'] / fps['plain'],
            ratio_unmerged_vs_plain=fps['unmerged'] / fps['plain'],
            ratio_merged_vs_plain_median=median['plain'] / median['merged'],
            merged_same_layers_as_plain=(_structure(models['merged'])
                                         == _structure(models['plain'])),
            max_abs_diff_merged_vs_unmerged=_max_abs_diff(models['merged'], model, inputs),
            max_abs_diff_plain_vs_unmerged=_max_abs_diff(models['plain'], model, inputs))
    if out:
        os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
        with atomic_output(out) as tmp, open(tmp, 'w') as f:
            json.dump(result, f, indent=2)
    return result


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The command line of ``tools/benchmark.py``."""
    parser = ArgumentParser(description='Benchmark merged vs unmerged adapter '
                                                 'inference')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', nargs='?', default=None, help='optional checkpoint')
    parser.add_argument('--backbone', default=None,
                        help='converted DINOv2 checkpoint; for an HFVisionBackbone config a '
                        'transformers folder or its config.json')
    parser.add_argument('--shape', type=int, nargs=2, default=[512, 512], metavar=('H', 'W'))
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--repeat', type=int, default=20)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--out', default='work_dirs/benchmark.json', help='json output')
    parser.add_cfg_options()
    return parser.parse_args(argv)


def _run(args):
    for name in ('batch', 'repeat'):
        if getattr(args, name) < 1:
            raise ValueError(f'--{name} must be >= 1, got {getattr(args, name)}')
    if min(args.shape) < 1 or args.warmup < 0:
        raise ValueError(f'--shape must be positive and --warmup >= 0, got --shape '
                         f'{args.shape[0]} {args.shape[1]} --warmup {args.warmup}')
    model = init_benchmark_model(args.config, args.checkpoint, device=args.device,
                                 backbone=args.backbone, cfg_options=args.cfg_options)
    result = benchmark(model, tuple(args.shape), args.batch, args.repeat, args.warmup,
                       out=args.out)
    print(json.dumps(result['fps'], indent=2))
    if result['adapter']:
        print(f"merged / plain = {result['ratio_merged_vs_plain']:.3f}, "
              f"unmerged / plain = {result['ratio_unmerged_vs_plain']:.3f}; "
              f"written to {args.out}")
    else:
        print(f'no adapters in this model: timed as it is (plain); written to {args.out}')


def main(argv: Optional[List[str]] = None) -> int:
    """``tools/benchmark.py``: exit code 0, or 1 with one ``error:`` line."""
    return run_cli(_run, parse_args(argv))
