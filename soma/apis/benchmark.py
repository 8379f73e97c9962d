"""Inference speed of a SoMA segmentor: adapters unmerged, merged, and the plain backbone.

Three copies of the same model are timed in one run, round-robin (so drifts of the machine
hit all three alike), on a random ``batch x 3 x H x W`` input, ``model(x, mode='tensor')``
(backbone + head network, no sliding window, no post-processing):

* ``unmerged``: the SoMA layers as trained (``x W^T + b + s (x A^T) B^T``);
* ``merged``: ``SoMAModel.merge_and_unload()``: ``B @ A`` folded in, plain ``nn.Linear``;
* ``plain``: the same network with plain ``nn.Linear`` layers holding the frozen weights
  (what DINOv2 without SoMA costs).

Merging adds no inference cost, so ``merged / plain`` should be ~1.0 (>= 0.98); the
merged model has exactly the plain model's layers (``merged_same_layers_as_plain``). FPS
figures use the fastest of the ``repeat`` runs of each model (robust to a busy machine);
``fps_median`` and every run's time are in the result too.

:func:`init_benchmark_model` builds the model of a config for it, DINOv2 or
``HFVisionBackbone`` (DINOv3, DINOv2, SigLIP2 from transformers): for the latter
``backbone`` is a transformers folder, or only its ``config.json`` (random weights of that
architecture: the speed does not depend on them).
"""
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
from soma.peft.layer import SoMALinear
from soma.peft.model import SoMAModel
from soma.utils.atomic import atomic_output

__all__ = ['init_benchmark_model', 'merged_copy', 'plain_copy', 'time_models', 'benchmark']


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
                         backbone: Optional[PathLike] = None, cfg_options: Optional[dict] = None
                         ) -> nn.Module:
    """:func:`soma.apis.inference.init_model` for a benchmark: with an ``HFVisionBackbone``
    config, ``backbone`` replaces ``model.backbone.model`` (a folder or a ``config.json``);
    otherwise it is the converted DINOv2, as for ``init_model``."""
    cfg = as_config(config, cfg_options)
    backbone_cfg = cfg.model.get('backbone') or {}
    if backbone_cfg.get('type') != 'HFVisionBackbone':
        return init_model(cfg, checkpoint, device=device, backbone=backbone)
    if backbone is not None:
        backbone_cfg['model'] = _hf_model_arg(backbone)
    return init_model(cfg, checkpoint, device=device)


def _backbone_wrapper(model: nn.Module) -> SoMAModel:
    backbone = getattr(model, 'backbone', None)
    if not isinstance(backbone, SoMAModel):
        raise ValueError(f'{type(model).__name__}.backbone is not a SoMA-wrapped backbone '
                         f'(set backbone.lora_cfg and use PEFTBackboneEncoderDecoder)')
    return backbone


def merged_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy whose backbone has the adapters merged and unloaded (plain nn.Linear).

    Its backbone is the bare ViT, so do not call ``train()``/``eval()`` on the PEFT
    segmentor copy (they re-apply SoMA's freezing, which needs the wrapper).
    """
    merged = copy.deepcopy(model).eval()  # eval first: the PEFT segmentor's train() re-freezes
    merged.backbone = _backbone_wrapper(merged).merge_and_unload()
    return merged


def plain_copy(model: nn.Module) -> nn.Module:
    """A copy whose backbone holds plain nn.Linear layers with the frozen weights only."""
    plain = copy.deepcopy(model).eval()
    inner = _backbone_wrapper(plain).model
    for name, module in list(inner.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, SoMALinear):
                linear = nn.Linear(child.in_features, child.out_features,
                                   bias=child.bias is not None, device=child.weight.device,
                                   dtype=child.weight.dtype)
                with torch.no_grad():
                    linear.weight.copy_(child.weight)
                    if child.bias is not None:
                        linear.bias.copy_(child.bias)
                setattr(module, child_name, linear)
    plain.backbone = inner
    return plain


def _count(module, cls):
    return sum(isinstance(m, cls) for m in module.modules())


def time_models(models: Dict[str, nn.Module], inputs: torch.Tensor, repeat: int = 10,
                warmup: int = 2) -> Dict[str, List[float]]:
    """Round-robin timing; ``{name: [seconds per forward, one per repeat]}``."""
    sync = torch.cuda.synchronize if inputs.is_cuda else (lambda: None)
    times = {name: [] for name in models}
    with torch.inference_mode():
        for _ in range(warmup):
            for model in models.values():
                model(inputs, mode='tensor')
        sync()
        for _ in range(repeat):
            for name, model in models.items():
                sync()
                start = time.perf_counter()
                model(inputs, mode='tensor')
                sync()
                times[name].append(time.perf_counter() - start)
    return times


def _structure(module):
    return [type(m).__name__ for m in module.modules()]


def benchmark(model: nn.Module, shape: Tuple[int, int] = (512, 512), batch: int = 1,
              repeat: int = 10, warmup: int = 2, out: Optional[str] = None,
              device: Optional[Device] = None) -> dict:
    """FPS of ``model`` unmerged / merged / plain; writes json to ``out`` when given.

    ``model``: a built SoMA segmentor (e.g. from :func:`soma.apis.inference.init_model`).
    Returns the result dict (``fps``, ratios, shapes, the largest output difference between
    merged and unmerged).
    """
    device = device or next(model.parameters()).device
    model = model.to(device).eval()
    models = {'unmerged': model, 'merged': merged_copy(model), 'plain': plain_copy(model)}
    leftover = _count(models['merged'], SoMALinear)
    if leftover:
        raise RuntimeError(f'merge_and_unload left {leftover} SoMA layers in the model')
    h, w = shape
    inputs = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.inference_mode():
        diff = (models['merged'](inputs, mode='tensor')
                - model(inputs, mode='tensor')).abs().max().item()
    times = time_models(models, inputs, repeat, warmup)
    best = {name: min(t) for name, t in times.items()}
    median = {name: statistics.median(t) for name, t in times.items()}
    fps = {name: batch / s for name, s in best.items()}
    result = dict(
        fps=fps,
        fps_median=({name: batch / s for name, s in median.items()}),
        seconds_per_forward=times,
        ratio_merged_vs_plain=fps['merged'] / fps['plain'],
        ratio_unmerged_vs_plain=fps['unmerged'] / fps['plain'],
        ratio_merged_vs_plain_median=median['plain'] / median['merged'],
        merged_same_layers_as_plain=_structure(models['merged']) == _structure(models['plain']),
        max_abs_diff_merged_vs_unmerged=diff,
        soma_layers=_count(model, SoMALinear),
        params=sum(p.numel() for p in model.parameters()),
        shape=[h, w], batch=batch, repeat=repeat, warmup=warmup, device=str(device),
        torch=torch.__version__, threads=torch.get_num_threads())
    if out:
        os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
        with atomic_output(out) as tmp, open(tmp, 'w') as f:
            json.dump(result, f, indent=2)
    return result
