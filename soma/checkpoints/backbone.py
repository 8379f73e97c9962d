"""The converted backbone: the one reader of it, and loading it into a model.

A converted backbone is what an adapter checkpoint is completed with (merge,
``tools/test.py --backbone``, ``init_model(backbone=...)``, ``LoadBackboneHook``):

* a converted DINOv2 file (``.pth`` / ``.safetensors``, ``tools/convert_models/
  convert_dinov2_sora.py``) with plain keys (``blocks.0.attn.q.weight`` ...), optionally all
  under ``backbone.`` or ``backbone.model.``; of a whole model checkpoint (heads too) its
  backbone part is read (a trained model's only when its adapted layers hold the pretrained
  weights: SoMA 'release' semantics, a plain peft LoRA; residuals are refused);
* for an ``HFVisionBackbone``: its transformers folder (``config.json`` + weights, as
  ``save_pretrained`` writes it; the folder, its ``config.json``, or an mmengine config
  whose backbone is an HFVisionBackbone on it), read as the backbone reads it
  (``hf_model.<transformers key>``).

:func:`read_converted_backbone` gives its plain keys; :func:`hf_folder_of` tells a
transformers folder argument; :func:`load_backbone_weights` puts the weights into a model's
backbone (under its adapter, if any).
"""
import os
import os.path as osp
from typing import Dict, List, Optional, Tuple

import torch
from mmengine.config import Config
from torch import nn

from soma.models.adapters.base import BackboneAdapter
from soma.models.backbones.hf_vision import HF_MODEL_PREFIX, hf_backbone_state_dict
from soma.models.peft_backbone import adapter_of
from soma.peft.config import ADAPTER_KEYWORD, SEMANTICS_RELEASE
from soma.utils.checkpoint_io import CheckpointError, get_state_dict

from .layout import (BACKBONE_PREFIX, PEFT, CheckpointLike, adapter_method, checkpoint_meta,
                     checkpoint_semantics, few, file_name, load_soma_checkpoint_file)

__all__ = ['CONVERT_SCRIPT', 'PRETRAINED_FILE', 'CONVERTED_FILE', 'converted_file_name',
           'hf_folder_of', 'backbone_part', 'read_converted_backbone', 'backbone_target',
           'plain_keys',
           'fitting_weights',
           'load_backbone_weights']

CONVERT_SCRIPT = 'tools/convert_models/convert_dinov2_sora.py'
PRETRAINED_FILE = 'checkpoints/dinov2_vitl14_pretrain.pth'
CONVERTED_FILE = 'checkpoints/dinov2_sora_converted.pth'


def converted_file_name(height: int, width: int) -> str:
    """The README's name of the DINOv2 backbone converted for ``height x width`` crops."""
    if (height, width) == (512, 512):
        return CONVERTED_FILE
    return CONVERTED_FILE.replace('.pth', f'_{height}x{width}.pth')


def hf_folder_of(source: CheckpointLike) -> Optional[str]:
    """The transformers folder an argument names: the folder, its ``config.json``, or an
    mmengine config (``.py``) whose ``model.backbone`` is an HFVisionBackbone on a folder;
    None for anything else (a converted DINOv2 file, a dict)."""
    if not isinstance(source, (str, os.PathLike)):
        return None
    path = os.fspath(source)
    if osp.isdir(path):
        return path
    if osp.basename(path) == 'config.json':
        return osp.dirname(path) or '.'
    if not path.endswith('.py'):
        return None
    if not osp.isfile(path):
        raise FileNotFoundError(f'config not found: {path}')
    backbone = Config.fromfile(path).model.get('backbone') or {}
    if backbone.get('type') != 'HFVisionBackbone':
        raise ValueError(f'{path}: model.backbone is {backbone.get("type")!r}, not an '
                         f'HFVisionBackbone; pass a converted DINOv2 checkpoint instead')
    folder = backbone.get('model')
    if not isinstance(folder, str):
        raise ValueError(f'{path}: model.backbone.model must name a transformers folder '
                         f'(pretrained weights), got a {type(folder).__name__}')
    return folder


def _hf_backbone_state_dict(folder: str, name: str) -> Dict[str, torch.Tensor]:
    """``hf_model.*`` keys of a transformers folder, as HFVisionBackbone loads it (without
    transformers' loading progress bar: the tools' stderr is for their one-line errors)."""
    from transformers.utils import logging as hf_logging  # transformers: optional dependency
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return hf_backbone_state_dict(folder)
    except (OSError, ValueError) as e:  # no config.json, another model type, no weights
        lines = str(e).strip().splitlines() or [type(e).__name__]
        raise CheckpointError(f'{name} {folder}: {lines[0]}') from None
    finally:
        if bar:
            hf_logging.enable_progress_bar()


def backbone_part(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The plain backbone keys of a state dict: all of it, or (when some keys are under
    ``backbone.``: a model checkpoint) its backbone part; ``backbone.`` and a wrapper's
    ``model.`` removed when every key has them."""
    if any(k.startswith(BACKBONE_PREFIX) for k in state_dict):
        state_dict = {k[len(BACKBONE_PREFIX):]: v for k, v in state_dict.items()
                      if k.startswith(BACKBONE_PREFIX)}
        wrapper = 'model.'
        if state_dict and all(k.startswith(wrapper) for k in state_dict):
            state_dict = {k[len(wrapper):]: v for k, v in state_dict.items()}
    return state_dict


def read_converted_backbone(source: CheckpointLike, name: str = 'backbone checkpoint'
                            ) -> Dict[str, torch.Tensor]:
    """Plain backbone keys of a converted backbone (see the module docstring): converted
    DINOv2 keys, or ``hf_model.*`` keys of a transformers folder. A state dict passed in is
    used as is (prefixes removed). One-line errors name the file and what is wrong."""
    folder = hf_folder_of(source)
    if folder is not None:
        return _hf_backbone_state_dict(folder, name)
    ckpt = load_soma_checkpoint_file(source)
    state_dict = backbone_part({k: v for k, v in get_state_dict(ckpt).items()
                                if torch.is_tensor(v)})
    fused = [k for k in state_dict if k.endswith('attn.qkv.weight')]
    if fused:
        raise CheckpointError(
            f'{name}: holds an unconverted DINOv2 ({fused[0]}); convert it first: python '
            f'{CONVERT_SCRIPT} {file_name(source, PRETRAINED_FILE)} {CONVERTED_FILE}')
    if 'pos_embed' not in state_dict and not any(k.startswith(HF_MODEL_PREFIX)
                                                 for k in state_dict):
        raise CheckpointError(
            f'{name}: not a converted DINOv2 backbone, it has no pos_embed key '
            f'(first keys: {few(state_dict)}); for an HFVisionBackbone pass its '
            f'transformers folder')
    lora = [k for k in state_dict if ADAPTER_KEYWORD in k]
    if lora:  # a trained model: usable when its adapted weights are the pretrained ones
        if not _pretrained_base(ckpt):
            raise CheckpointError(
                f'{name}: a trained model ({few(lora, 1)}) whose adapted weights are residuals '
                f'W - s*B0@A0, not the backbone it was trained on; pass that converted '
                f'backbone (the demo writes it to WORK_DIR/backbone.pth)')
        state_dict = {k: v for k, v in state_dict.items() if ADAPTER_KEYWORD not in k}
    return state_dict


def _pretrained_base(ckpt: dict) -> bool:
    """Whether a trained model checkpoint stores its adapted layers' pretrained weights (SoMA
    'release' semantics, a peft init that leaves the base weight alone)."""
    if adapter_method(ckpt) == PEFT:
        return checkpoint_meta(ckpt)[PEFT].get('base_weight') != 'residual'
    return checkpoint_semantics(ckpt) == SEMANTICS_RELEASE


def backbone_target(model: nn.Module) -> Tuple[nn.Module, str, Optional[BackboneAdapter]]:
    """``(module holding the plain backbone keys, its key prefix in the model's state dict,
    the adapter or None)`` of a segmentor / detector."""
    adapter = adapter_of(model.backbone)
    if adapter is None:
        return model.backbone, BACKBONE_PREFIX, None
    return adapter.backbone, BACKBONE_PREFIX + adapter.base_prefix, adapter


def plain_keys(target: nn.Module, adapter: Optional[BackboneAdapter]) -> List[str]:
    """The keys of ``target`` that a converted backbone fills (not the adapters')."""
    keys = list(target.state_dict())
    if adapter is None:
        return keys
    skip = set(adapter.adapter_keys())
    own = adapter.base_prefix
    return [k for k in keys if own + k not in skip]


def fitting_weights(target: nn.Module, adapter: Optional[BackboneAdapter],
                    weights: Dict[str, torch.Tensor], source: CheckpointLike, strict: bool = True
                    ) -> Dict[str, torch.Tensor]:
    """The converted ``weights`` that fit ``target`` (plain keys, sorted); one-line errors for
    no common key, a shape mismatch, or (``strict``) a backbone weight the file lacks."""
    own = target.state_dict()
    plain = set(plain_keys(target, adapter))
    common = plain & set(weights)
    where = file_name(source, 'the converted backbone')
    if not common:
        raise CheckpointError(
            f'{where}: no key fits the backbone {type(target).__name__} '
            f'(e.g. file key {next(iter(weights), None)!r}, backbone key '
            f'{next(iter(sorted(plain)), None)!r})')
    for key in sorted(common):
        if tuple(weights[key].shape) != tuple(own[key].shape):
            raise CheckpointError(
                f'{where}: {key} has shape {tuple(weights[key].shape)}, the backbone '
                f'expects {tuple(own[key].shape)} (another architecture or input size?)')
    missing = sorted(plain - set(weights))
    if strict and missing:
        raise CheckpointError(f'{where}: {len(missing)} backbone weights are missing, '
                              f'e.g. {missing[0]}')
    return {k: weights[k] for k in sorted(common)}


def load_backbone_weights(model: nn.Module, source: CheckpointLike, strict: bool = True
                          ) -> List[str]:
    """Load a converted backbone into ``model.backbone`` (under its adapter, whose inits then
    read these weights); return the loaded keys. The backbone is marked initialised, so
    mmengine's ``init_weights()`` keeps them."""
    target, _, adapter = backbone_target(model)
    weights = fitting_weights(target, adapter, read_converted_backbone(source), source, strict)
    target.load_state_dict(weights, strict=False)
    if hasattr(target, 'is_init'):
        target.is_init = True  # mmengine's flag: init_weights() must not overwrite these weights
    return sorted(weights)
