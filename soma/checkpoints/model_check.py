"""Can this checkpoint load into this model? One line that says why not, before loading.

:func:`check_checkpoint_for_model` compares a state dict with the model built from a config
and names the first fault a user can fix: an adapter-only checkpoint used without its
backbone (with the command that fixes it), a backbone converted for another resolution or of
another size, adapters on other blocks than the config adapts, another adapter rank, another
head, then any other missing or unexpected key.
"""
import os
import os.path as osp

from typing import Optional

import torch
from mmengine.config import Config
from torch import nn

from soma.peft.config import ADAPTER_KEYWORD
from soma.peft.model import block_index
from soma.utils.checkpoint_io import CheckpointError

from .backbone import CONVERT_SCRIPT, PRETRAINED_FILE, converted_file_name
from .layout import (BACKBONE_PREFIX, PathLike, DINOV2_LAYERS_PATTERN, MASK_TOKEN, SOMA_LORA_A,
                     SOMA_PREFIX, few)

__all__ = ['check_checkpoint_for_model']


def _cfg_get(cfg, *path, default=None):
    node = cfg
    for part in path:
        if node is None:
            return default
        node = node.get(part) if hasattr(node, 'get') else getattr(node, part, None)
    return default if node is None else node


def _grid(n_tokens):
    side = int(round(n_tokens ** 0.5))
    return (side, side) if side * side == n_tokens else None


def check_checkpoint_for_model(model: nn.Module, state_dict: dict, cfg: Optional[Config] = None,
                               checkpoint_path: Optional[PathLike] = None,
                               config_path: Optional[PathLike] = None, strict: bool = True) -> None:
    """Raise a one-line :class:`CheckpointError` when ``state_dict`` cannot load into ``model``.

    Checked, in order: an adapter-only checkpoint used without backbone weights (names the
    missing keys and the command that fixes it), a backbone converted for another resolution
    than the config's (pos_embed grid), adapter keys for blocks the config does not adapt (or
    missing for blocks it adapts), rank/shape mismatches (key and both shapes), then (with
    ``strict``) any other missing or unexpected key.
    """
    expected = model.state_dict()
    ckpt = os.fspath(checkpoint_path) if checkpoint_path else 'CHECKPOINT'
    config_path = config_path or getattr(cfg, 'filename', None) or 'CONFIG'
    prefix = (SOMA_PREFIX if any(k.startswith(SOMA_PREFIX) for k in expected)
              else BACKBONE_PREFIX)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]

    # 1. adapter-only checkpoint without the backbone
    missing_bb = [k for k in missing if k.startswith(prefix) and ADAPTER_KEYWORD not in k]
    given_bb = [k for k in state_dict if k.startswith(BACKBONE_PREFIX)]
    adapter_only = all(ADAPTER_KEYWORD in k or k.endswith('.bias') or k.endswith(MASK_TOKEN)
                       for k in given_bb)
    if missing_bb and adapter_only:
        converted, make = _converted_backbone_of(cfg, expected, prefix)
        merged = osp.join('checkpoints', 'merged_checkpoints', osp.basename(ckpt))
        raise CheckpointError(
            f'{ckpt} holds only adapter and head weights: {len(missing_bb)} backbone keys are '
            f'missing ({few(missing_bb)}); add the converted backbone{make}: python '
            f'tools/test.py {config_path} {ckpt} --backbone {converted} (or merge first: '
            f'python tools/merge_soma_weights.py --backbone_ckpt {converted} --soma_ckpt '
            f'{ckpt} --merged_ckpt {merged})')

    # 1b. plain backbone keys (adapters folded in) for a SoMA model
    plain_bb = [k for k in unexpected
                if k.startswith(BACKBONE_PREFIX) and not k.startswith(SOMA_PREFIX)]
    if prefix == SOMA_PREFIX and missing_bb and plain_bb:
        raise CheckpointError(
            f'{ckpt} has plain backbone keys ({few(plain_bb, 1)}) but the model expects '
            f'{SOMA_PREFIX!r} keys (adapters folded in by generate_full_weights.py '
            f'--merge-adapters? such a checkpoint loads into a config without lora_cfg)')

    # 2. backbone converted for another resolution
    pos_key = prefix + 'pos_embed'
    if pos_key in expected and pos_key in state_dict:
        _check_resolution(expected[pos_key], state_dict[pos_key], expected, prefix, cfg, ckpt)

    # 3. adapters on other blocks than the config adapts
    lora_cfg = _cfg_get(cfg, 'model', 'backbone', 'lora_cfg') or {}
    cfg_desc = (f"start_lora_idx={lora_cfg.get('start_lora_idx', '?')}, "
                f"target_modules={lora_cfg.get('target_modules', '?')}") if lora_cfg else ''
    extra_lora = [k for k in unexpected if ADAPTER_KEYWORD in k]
    if extra_lora:
        blocks = _blocks(extra_lora, _layers_pattern_of(model))
        raise CheckpointError(
            f'{ckpt} has adapters for layers the config does not adapt (blocks {blocks}, '
            f'{len(extra_lora)} keys, e.g. {few(extra_lora, 1)}); '
            f'{"the config has " + cfg_desc if cfg_desc else "the model has no adapters there"}')
    missing_lora = [k for k in missing if ADAPTER_KEYWORD in k]
    if missing_lora:
        raise CheckpointError(
            f'the config adapts layers that have no adapter in {ckpt} (blocks '
            f'{_blocks(missing_lora, _layers_pattern_of(model))}, {len(missing_lora)} keys, '
            f'e.g. {few(missing_lora, 1)})'
            f'{"; the config has " + cfg_desc if cfg_desc else ""}')

    # 4. shapes
    for key, value in state_dict.items():
        if key not in expected or not torch.is_tensor(value):
            continue
        want = expected[key]
        if tuple(value.shape) == tuple(want.shape):
            continue
        if ADAPTER_KEYWORD in key:
            dim = 0 if key.endswith(SOMA_LORA_A) else -1
            have_r, want_r = value.shape[dim], want.shape[dim]
            raise CheckpointError(
                f'adapter rank mismatch at {key}: shape {tuple(value.shape)} (r={have_r}) '
                f'in {ckpt}, {tuple(want.shape)} (r={want_r}) in the model; set '
                f'lora_cfg r={have_r} in {config_path}')
        raise CheckpointError(
            f'shape mismatch at {key}: {tuple(value.shape)} in {ckpt}, '
            f'{tuple(want.shape)} in the model built from {config_path}')

    if not strict:
        return
    # 5. everything else
    if missing:
        raise CheckpointError(
            f'{len(missing)} keys of the model are missing from {ckpt} ({few(missing)})')
    if unexpected:
        raise CheckpointError(
            f'{ckpt} has {len(unexpected)} keys the model does not have ({few(unexpected)})')


def _converted_backbone_of(cfg, expected, prefix):
    """``(the converted backbone to name, how to make it when it does not exist yet)``: the
    config's own Pretrained backbone file, the transformers folder of an HFVisionBackbone,
    else the README's converted DINOv2 for the model's resolution."""
    init_cfg = _cfg_get(cfg, 'model', 'backbone', 'init_cfg') or {}
    own = init_cfg.get('checkpoint') if init_cfg.get('type') == 'Pretrained' else None
    if isinstance(own, str) and osp.exists(own):
        return own, ''
    hf_folder = _cfg_get(cfg, 'model', 'backbone', 'model')
    if _cfg_get(cfg, 'model', 'backbone', 'type') == 'HFVisionBackbone' and isinstance(
            hf_folder, str):  # its converted backbone: the transformers folder
        return hf_folder, ''
    pos = expected.get(prefix + 'pos_embed')
    grid = _grid(pos.shape[1] - 1) if pos is not None else None
    patch = _patch_size(expected, prefix)
    height, width = (grid[0] * patch, grid[1] * patch) if grid and patch else (512, 512)
    converted = converted_file_name(height, width)
    if osp.exists(converted):
        return converted, ''
    return converted, (f' (make it first: python {CONVERT_SCRIPT} {PRETRAINED_FILE} {converted} '
                       f'--height {height} --width {width}; then)')


def _patch_size(expected, prefix):
    weight = expected.get(prefix + 'patch_embed.proj.weight')
    return None if weight is None else int(weight.shape[-1])


def _layers_pattern_of(model):
    """The block container the model's backbone names (SoMA's wrapper passes the question
    on to the backbone it wraps), else DINOv2's."""
    return getattr(getattr(model, 'backbone', None), 'layers_pattern', DINOV2_LAYERS_PATTERN)


def _blocks(keys, layers_pattern=DINOV2_LAYERS_PATTERN):
    found = sorted({block_index(k, layers_pattern) for k in keys} - {None})
    return found or '?'


def _check_resolution(want, have, expected, prefix, cfg, ckpt):
    if tuple(want.shape) == tuple(have.shape):
        return
    if want.shape[-1] != have.shape[-1]:  # another architecture, not another resolution
        raise CheckpointError(
            f'{ckpt}: {prefix}pos_embed has embedding width {have.shape[-1]} (shape '
            f'{tuple(have.shape)}) but the model has {want.shape[-1]} (shape '
            f'{tuple(want.shape)}): a backbone of another size (e.g. ViT-S/B/L/g); use the '
            f'checkpoint converted for the arch of the config')
    patch = _patch_size(expected, prefix) or 16
    img_size = _cfg_get(cfg, 'model', 'backbone', 'img_size')
    if img_size is not None:
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        config_res = f'{h}x{w} (img_size {img_size}, patch {patch})'
    else:
        grid = _grid(want.shape[1] - 1) or (None, None)
        h, w = (grid[0] * patch, grid[1] * patch) if grid[0] else (512, 512)
        config_res = f'{h}x{w} (pos_embed {tuple(want.shape)})'
    grid = _grid(have.shape[1] - 1)
    ckpt_res = (f'{grid[0] * patch}x{grid[1] * patch} (pos_embed grid {grid[0]}x{grid[1]})'
                if grid else f'{have.shape[1] - 1} patch positions')
    raise CheckpointError(
        f'{ckpt}: the backbone was converted for {ckpt_res} but the config expects '
        f'{config_res}; convert for it: python {CONVERT_SCRIPT} {PRETRAINED_FILE} '
        f'{converted_file_name(h, w)} --height {h} --width {w}')
