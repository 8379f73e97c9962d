"""Convert Meta's official DINOv3 ViT checkpoints into a transformers ``DINOv3ViTModel`` folder.

Input: a ``dinov3_vit*16_pretrain_*.pth`` of facebookresearch/dinov3 (any ViT size). Output:
``OUT_DIR/config.json`` + ``OUT_DIR/model.safetensors``, as ``save_pretrained`` writes them, so
that ``transformers.DINOv3ViTModel.from_pretrained(OUT_DIR)`` and
``HFVisionBackbone(model=OUT_DIR)`` load it. The folder appears only when complete.

Key mapping (official -> transformers file keys): ``cls_token``, ``storage_tokens`` ->
``embeddings.register_tokens``, ``mask_token`` (1, E) -> (1, 1, E), ``patch_embed.proj`` ->
``embeddings.patch_embeddings``; per block ``attn.qkv`` split in three along dim 0 into
``attention.{q,k,v}_proj`` (the key bias dropped: the official ``bias_mask`` zeroes it and
transformers has ``key_bias=False``), ``attn.proj`` -> ``o_proj``, ``ls{1,2}.gamma`` ->
``layer_scale{1,2}.lambda1``, ``mlp.fc1/fc2`` -> ``up_proj/down_proj`` (MLP) or
``mlp.w1/w2/w3`` -> ``gate_proj/up_proj/down_proj`` (SwiGLU); ``norm*`` kept;
``rope_embed.periods`` and the training-only ``local_cls_norm.*`` are not stored.

Architecture from the shapes: width, depth, MLP width, register count, gated or not, patch
size; the head count from ``len(rope_embed.periods)`` (head_dim = 4 x len) and the RoPE base
``periods[1] ** (head_dim / 4)``. ``arch`` (e.g. ``'vitl16'``) must agree with the shapes; it
supplies the head count when the checkpoint has no ``rope_embed.periods``.
"""
import os
import os.path as osp
import re

import torch
from safetensors.torch import save_file

from soma.utils.atomic import atomic_output_dir
from soma.utils.checkpoint_io import CheckpointError, get_state_dict, load_checkpoint_file

__all__ = ['DINOV3_ARCHS', 'convert_dinov3_state_dict', 'convert_dinov3_checkpoint']

# facebookresearch/dinov3 ViTs: (width, depth, heads, SwiGLU)
DINOV3_ARCHS = {
    'vits16': (384, 12, 6, False),
    'vits16plus': (384, 12, 6, True),
    'vitb16': (768, 12, 12, False),
    'vitl16': (1024, 24, 16, False),
    'vitl16plus': (1024, 24, 16, True),
    'vith16plus': (1280, 32, 20, True),
    'vit7b16': (4096, 40, 32, True),
}
_DROPPED = re.compile(r'(rope_embed\.periods|local_cls_norm\..*|blocks\.\d+\.attn\.qkv\.bias_mask)')
_FIXED = {
    'cls_token': 'embeddings.cls_token',
    'storage_tokens': 'embeddings.register_tokens',
    'patch_embed.proj.weight': 'embeddings.patch_embeddings.weight',
    'patch_embed.proj.bias': 'embeddings.patch_embeddings.bias',
    'norm.weight': 'norm.weight',
    'norm.bias': 'norm.bias',
}
_BLOCK = {
    'norm1': 'norm1', 'norm2': 'norm2', 'attn.proj': 'attention.o_proj',
    'ls1': 'layer_scale1', 'ls2': 'layer_scale2',  # gamma -> lambda1
    'mlp.fc1': 'mlp.up_proj', 'mlp.fc2': 'mlp.down_proj',
    'mlp.w1': 'mlp.gate_proj', 'mlp.w2': 'mlp.up_proj', 'mlp.w3': 'mlp.down_proj',
}
_BLOCK_RE = re.compile(r'blocks\.(\d+)\.(.+)\.(weight|bias|gamma)$')


def _need(state, key, where):
    if key not in state:
        raise CheckpointError(f'{where}: key {key!r} missing; not an official DINOv3 ViT '
                              f'checkpoint')
    return state[key]


def _infer_config(state, arch, where):
    """``DINOv3ViTConfig`` fields read from the shapes (and ``arch`` for the head count)."""
    width = _need(state, 'cls_token', where).shape[-1]
    patch = _need(state, 'patch_embed.proj.weight', where).shape[-1]
    depth = 1 + max((int(m.group(1)) for m in map(_BLOCK_RE.match, state) if m), default=-1)
    gated = 'blocks.0.mlp.w1.weight' in state
    hidden = _need(state, f'blocks.0.mlp.{"w1" if gated else "fc1"}.weight', where).shape[0]
    registers = state['storage_tokens'].shape[1] if 'storage_tokens' in state else 0
    if arch is not None:
        if arch not in DINOV3_ARCHS:
            raise ValueError(f'--arch {arch!r} is not a DINOv3 ViT; one of {sorted(DINOV3_ARCHS)}')
        a_width, a_depth, a_heads, a_gated = DINOV3_ARCHS[arch]
        if (width, depth, gated) != (a_width, a_depth, a_gated):
            raise CheckpointError(
                f'{where}: the checkpoint is a ViT of width {width}, depth {depth}, '
                f'{"SwiGLU" if gated else "MLP"}, not --arch {arch} (width {a_width}, depth '
                f'{a_depth}, {"SwiGLU" if a_gated else "MLP"})')
    periods = state.get('rope_embed.periods')
    if periods is not None:
        head_dim = 4 * periods.numel()
        rope_theta = float(periods.double()[1] ** (head_dim / 4)) if periods.numel() > 1 else 100.
        rope_theta = round(rope_theta, 6)
    elif arch is not None:
        head_dim, rope_theta = width // DINOV3_ARCHS[arch][2], 100.0
    else:
        raise CheckpointError(f'{where}: no rope_embed.periods to read the head count from; '
                              f'name the size with --arch ({sorted(DINOV3_ARCHS)})')
    if width % head_dim:
        raise CheckpointError(f'{where}: width {width} is not a multiple of head_dim '
                              f'{head_dim} (4 x len(rope_embed.periods))')
    has = lambda k: f'blocks.0.{k}' in state  # noqa: E731
    return dict(
        hidden_size=width, num_hidden_layers=depth, num_attention_heads=width // head_dim,
        intermediate_size=hidden, patch_size=patch, num_register_tokens=registers,
        use_gated_mlp=gated, hidden_act='silu' if gated else 'gelu', rope_theta=rope_theta,
        layer_norm_eps=1e-5, query_bias=has('attn.qkv.bias'), key_bias=False,
        value_bias=has('attn.qkv.bias'), proj_bias=has('attn.proj.bias'),
        mlp_bias=has('mlp.w1.bias' if gated else 'mlp.fc1.bias'),
        architectures=['DINOv3ViTModel'])


def convert_dinov3_state_dict(state, arch=None, where='checkpoint'):
    """Official state dict -> ``(config fields, transformers file state dict)``."""
    config = _infer_config(state, arch, where)
    out = {}
    for key, value in state.items():
        if _DROPPED.fullmatch(key):
            continue
        if key in _FIXED:
            out[_FIXED[key]] = value
        elif key == 'mask_token':
            out['embeddings.mask_token'] = value.reshape(1, 1, -1)
        elif (m := _BLOCK_RE.match(key)) and m.group(2) == 'attn.qkv':
            i, kind = m.group(1), m.group(3)
            q, k, v = value.chunk(3, dim=0)
            out[f'layer.{i}.attention.q_proj.{kind}'] = q
            if kind == 'weight':  # the key bias is masked to zero in the official model
                out[f'layer.{i}.attention.k_proj.{kind}'] = k
            out[f'layer.{i}.attention.v_proj.{kind}'] = v
        elif m and m.group(2) in _BLOCK:
            kind = 'lambda1' if m.group(3) == 'gamma' else m.group(3)
            out[f'layer.{m.group(1)}.{_BLOCK[m.group(2)]}.{kind}'] = value
        else:
            raise CheckpointError(f'{where}: unexpected key {key!r} (shape '
                                  f'{tuple(value.shape)}) for an official DINOv3 ViT')
    _check_complete(config, out, where)
    return config, {k: v.contiguous() for k, v in out.items()}


def _check_complete(config, tensors, where):
    """The converted tensors are exactly those of ``DINOv3ViTModel(config)``, shapes too
    (a meta-device model: no memory, also for 7B)."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel  # optional dependency
    with torch.device('meta'):
        model = DINOv3ViTModel(DINOv3ViTConfig(**config))
    # in memory the blocks are model.layer.N; the file (save_pretrained) has layer.N
    expected = {re.sub(r'^model\.layer\.', 'layer.', k): tuple(v.shape)
                for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise CheckpointError(f'{where}: incomplete DINOv3 checkpoint, no tensor for '
                              f'{missing[:4]} ({len(missing)} missing)')
    for key, value in tensors.items():
        if key not in expected or tuple(value.shape) != expected[key]:
            raise CheckpointError(f'{where}: {key} has shape {tuple(value.shape)}, expected '
                                  f'{expected.get(key)} for the inferred architecture')


def convert_dinov3_checkpoint(src, out_dir, arch=None):
    """Convert the official checkpoint ``src`` into the transformers folder ``out_dir``.

    ``out_dir`` must not exist or be empty; it is written as a temporary sibling folder and
    renamed into place only when complete. Returns ``out_dir``.
    """
    from transformers import DINOv3ViTConfig  # transformers: optional dependency
    out_dir = os.fspath(out_dir)
    if osp.exists(out_dir) and (not osp.isdir(out_dir) or os.listdir(out_dir)):
        raise FileExistsError(f'{out_dir} exists and is not an empty folder')
    state = get_state_dict(load_checkpoint_file(src))
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f'{src}: not a state dict of tensors')
    config, tensors = convert_dinov3_state_dict(state, arch, where=os.fspath(src))
    with atomic_output_dir(out_dir) as tmp:
        DINOv3ViTConfig(**config).save_pretrained(tmp)
        save_file(tensors, osp.join(tmp, 'model.safetensors'), metadata={'format': 'pt'})
    return out_dir
