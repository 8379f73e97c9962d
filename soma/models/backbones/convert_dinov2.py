"""Convert released DINOv2 weights into the SoMA backbone layout (SPEC section 5).

Input: the official ``dinov2_vit*14_pretrain.pth`` (fused ``attn.qkv``) or a Hugging Face
``Dinov2Model`` checkpoint (``model.safetensors`` / ``pytorch_model.bin``, with or without a
``dinov2.`` prefix). Output: a plain state dict for :class:`DinoVisionTransformer` with

1. ``patch_embed.proj.weight`` resized to ``kernel x kernel`` (bicubic, align_corners=False,
   computed in float32);
2. the patch part of ``pos_embed`` reshaped to its source grid (37 x 37 for the release)
   and resized bicubically to ``(height / kernel, width / kernel)``, cls token in front;
3. every ``qkv`` weight/bias split into three equal chunks along dim 0 -> ``q``, ``k``, ``v``.
"""
import math
import os
import os.path as osp
import re

import torch
import torch.nn.functional as F
from mmengine.logging import print_log

from soma.utils.checkpoint_io import (CheckpointError, get_state_dict, load_checkpoint_file,
                                      save_checkpoint_file)

__all__ = ['hf_dinov2_to_ours', 'check_sizes', 'convert_dinov2_state_dict',
           'convert_dinov2_checkpoint', 'is_hf_dinov2']

REQUIRED_KEYS = ('patch_embed.proj.weight', 'pos_embed', 'cls_token')
HF_MARKER = 'embeddings.patch_embeddings.projection.weight'
HF_PREFIX = 'dinov2.'
HF_FILES = ('model.safetensors', 'pytorch_model.bin')

# Hugging Face names (transformers 4.x files and 5.x modules) -> DINOv2/SoMA names
_HF_FIXED = {
    'embeddings.cls_token': 'cls_token',
    'embeddings.mask_token': 'mask_token',
    'embeddings.position_embeddings': 'pos_embed',
    'embeddings.patch_embeddings.projection.weight': 'patch_embed.proj.weight',
    'embeddings.patch_embeddings.projection.bias': 'patch_embed.proj.bias',
    'layernorm.weight': 'norm.weight',
    'layernorm.bias': 'norm.bias',
}
_HF_LAYER = {
    'norm1': 'norm1', 'norm2': 'norm2',
    'attention.attention.query': 'attn.q', 'attention.q_proj': 'attn.q',
    'attention.attention.key': 'attn.k', 'attention.k_proj': 'attn.k',
    'attention.attention.value': 'attn.v', 'attention.v_proj': 'attn.v',
    'attention.output.dense': 'attn.proj', 'attention.o_proj': 'attn.proj',
    'layer_scale1.lambda1': 'ls1.gamma', 'layer_scale2.lambda1': 'ls2.gamma',
    'mlp.fc1': 'mlp.fc1', 'mlp.fc2': 'mlp.fc2',
    'mlp.weights_in': 'mlp.w12', 'mlp.weights_out': 'mlp.w3', 'mlp.down_proj': 'mlp.w3',
}
_HF_LAYER_KEY = re.compile(r'^encoder\.layer\.(\d+)\.(.+?)(\.weight|\.bias)?$')
# heads of Dinov2For* models, not part of the backbone
_HF_SKIPPED_PREFIXES = ('classifier.', 'pooler.')


def is_hf_dinov2(state_dict):
    """Whether ``state_dict`` uses Hugging Face Dinov2 key names."""
    return any(k == HF_MARKER or k == HF_PREFIX + HF_MARKER for k in state_dict)


def hf_dinov2_to_ours(state_dict):
    """Rename a Hugging Face ``Dinov2Model`` state dict to this project's DINOv2 names.

    Accepts the file layout of transformers 4.x (``attention.attention.query``,
    ``mlp.weights_in``/``weights_out``, ...) and the module layout of transformers 5.x
    (``attention.q_proj``, ``mlp.gate_proj``/``up_proj``/``down_proj``; gate and up are
    concatenated into ``w12``), with or without a ``dinov2.`` prefix. Tensors are not copied.
    Raises ValueError naming the first key it does not know.
    """
    out, gate_up = {}, {}
    for key, value in state_dict.items():
        name = key[len(HF_PREFIX):] if key.startswith(HF_PREFIX) else key
        if name in _HF_FIXED:
            out[_HF_FIXED[name]] = value
            continue
        if name.startswith(_HF_SKIPPED_PREFIXES):
            continue
        match = _HF_LAYER_KEY.match(name)
        if match and match.group(2) in ('mlp.gate_proj', 'mlp.up_proj'):
            part = 0 if match.group(2) == 'mlp.gate_proj' else 1
            gate_up.setdefault((match.group(1), match.group(3)), [None, None])[part] = value
            continue
        if not match or match.group(2) not in _HF_LAYER:
            raise ValueError(f'unknown Hugging Face Dinov2 key {key!r}')
        index, module, suffix = match.groups()
        out[f'blocks.{index}.{_HF_LAYER[module]}{suffix or ""}'] = value
    for (index, suffix), (gate, up) in gate_up.items():
        if gate is None or up is None:
            missing = 'gate_proj' if gate is None else 'up_proj'
            raise ValueError(f'Hugging Face Dinov2 block {index} lacks mlp.{missing}{suffix}')
        out[f'blocks.{index}.mlp.w12{suffix}'] = torch.cat([gate, up], dim=0)
    return out


def _resize_patch_kernel(weight, kernel):
    resized = F.interpolate(weight.float(), size=(kernel, kernel), mode='bicubic',
                            align_corners=False)
    return resized.to(weight.dtype)


def _resize_pos_embed(pos_embed, grid_hw):
    """(1, 1 + M*M, D) -> (1, 1 + h*w, D): bicubic on the patch part, cls kept in front."""
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise CheckpointError(f'pos_embed must have shape (1, 1 + N, D), got '
                              f'{tuple(pos_embed.shape)}')
    num_patches, dim = pos_embed.shape[1] - 1, pos_embed.shape[2]
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise CheckpointError(f'pos_embed holds {num_patches} patch positions, not a square grid')
    patch_pos = pos_embed[:, 1:].float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos, size=grid_hw, mode='bicubic', align_corners=False)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_hw[0] * grid_hw[1], dim)
    return torch.cat([pos_embed[:, :1], patch_pos.to(pos_embed.dtype)], dim=1), side


def check_sizes(kernel: int, height: int, width: int) -> None:
    """A one-line ValueError unless ``height`` and ``width`` are positive multiples of a
    positive ``kernel``."""
    if kernel < 1:
        raise ValueError(f'kernel {kernel} must be >= 1')
    for name, size in (('height', height), ('width', width)):
        if size <= 0 or size % kernel:
            raise ValueError(f'{name} {size} is not a positive multiple of kernel {kernel}')


def convert_dinov2_state_dict(state_dict, kernel=16, height=512, width=512):
    """Convert a DINOv2 state dict (official or Hugging Face) to the SoMA backbone layout.

    ``state_dict`` may also be a checkpoint dict holding ``state_dict``/``model``. Returns a
    new flat dict of tensors; logs what it changed. Raises ValueError (CheckpointError) for
    a dict that is not DINOv2 and for sizes not divisible by ``kernel``.
    """
    check_sizes(kernel, height, width)
    state_dict = get_state_dict(state_dict)
    if not isinstance(state_dict, dict):
        raise CheckpointError(f'expected a dict of tensors, got {type(state_dict).__name__}')
    if is_hf_dinov2(state_dict):
        print_log('input uses Hugging Face Dinov2 names: renaming', logger='current')
        state_dict = hf_dinov2_to_ours(state_dict)
    for key in REQUIRED_KEYS:
        if key not in state_dict:
            raise CheckpointError(f'not a DINOv2 checkpoint: missing key {key!r}')

    out = {}
    num_split = 0
    for key, value in state_dict.items():
        if not torch.is_tensor(value):
            raise CheckpointError(f'not a DINOv2 checkpoint: {key!r} is not a tensor')
        if key == 'patch_embed.proj.weight':
            out[key] = _resize_patch_kernel(value, kernel)
            print_log(f'{key}: {tuple(value.shape)} -> {tuple(out[key].shape)} (bicubic)',
                      logger='current')
        elif key == 'pos_embed':
            grid = (height // kernel, width // kernel)
            out[key], side = _resize_pos_embed(value, grid)
            print_log(f'pos_embed: grid {side}x{side} -> {grid[0]}x{grid[1]} (bicubic), '
                      f'cls token kept', logger='current')
        elif re.search(r'(^|\.)qkv\.(weight|bias)$', key):
            if value.shape[0] % 3:
                raise CheckpointError(f'{key}: dim 0 ({value.shape[0]}) is not divisible by 3')
            prefix, suffix = key.rsplit('qkv', 1)
            for name, chunk in zip('qkv', value.chunk(3, dim=0)):
                out[f'{prefix}{name}{suffix}'] = chunk.clone()
            num_split += 1
        else:
            out[key] = value
    print_log(f'split {num_split} qkv tensors into q/k/v; {len(out)} tensors in total',
              logger='current')
    return out


def _resolve_source(src):
    src = os.fspath(src)
    if osp.isdir(src):
        for name in HF_FILES:
            if osp.isfile(osp.join(src, name)):
                return osp.join(src, name)
        raise FileNotFoundError(f'{src}: a folder without {" or ".join(HF_FILES)}')
    if not osp.exists(src):
        raise FileNotFoundError(f'checkpoint not found: {src}')
    return src


def convert_dinov2_checkpoint(src, dst, kernel=16, height=512, width=512):
    """Read ``src`` (a file, or a Hugging Face model folder), convert, write ``dst``.

    ``dst`` is written atomically (a ``.safetensors`` name gives safetensors). Returns the
    converted state dict. Errors name ``src``; nothing is written on error.
    """
    check_sizes(kernel, height, width)
    src = _resolve_source(src)
    print_log(f'loading {src}', logger='current')
    ckpt = load_checkpoint_file(src)
    try:
        converted = convert_dinov2_state_dict(ckpt, kernel=kernel, height=height, width=width)
    except ValueError as e:
        raise type(e)(f'{src}: {e}') from None
    save_checkpoint_file(converted, dst)
    print_log(f'saved {len(converted)} tensors to {dst}', logger='current')
    return converted
