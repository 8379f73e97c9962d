"""DINOv2 vision transformer, the SoMA backbone (SPEC section 2).

One readable file with its own small layers. Parameter names are DINOv2's, except that the
attention has three separate linears ``attn.q``, ``attn.k``, ``attn.v`` (the SoMA release's
layout, produced by ``soma.models.backbones.convert_dinov2`` from DINOv2's fused ``qkv``):

    cls_token, pos_embed, mask_token, patch_embed.proj.*, blocks.<i>.norm1.*,
    blocks.<i>.attn.{q,k,v,proj}.*, blocks.<i>.ls1.gamma, blocks.<i>.norm2.*,
    blocks.<i>.mlp.{fc1,fc2}.* (or mlp.{w12,w3}.* for SwiGLU), blocks.<i>.ls2.gamma, norm.*

Behaviour worth knowing:

* ``pos_embed`` is stored at the grid ``img_size // patch_size`` (plus the cls token) and
  resized at run time, bicubically, for any other grid, the DINOv2 way: the scale factor is
  ``(grid + interpolate_offset) / stored_grid`` (no antialias, computed in float32).
* An input whose height/width is not a multiple of ``patch_size`` gives the maps
  ``floor(H / p) x floor(W / p)`` tokens: as in the release (a conv with kernel = stride = p),
  the right/bottom remainder is dropped. ``pad_to_patch=True`` zero-pads it at the
  right/bottom to the next multiple instead (``ceil(H / p) x ceil(W / p)`` tokens).
* Construction leaves every ``nn.Linear`` as PyTorch's default init made it when ``lora_cfg``
  has ``svd_init_on='construction'`` (the release builds its adapters from the SVD of those
  weights); otherwise the linears get DINOv2's trunc-normal init at construction already.
  ``init_weights()`` without a Pretrained ``init_cfg`` applies DINOv2's init either way.
* ``forward`` returns the patch tokens after the 4 blocks ``out_indices`` (no final norm) as
  maps resampled bilinearly by x4, x2, x1, x0.5 (strides p/4, p/2, p, 2p; 4, 8, 16, 32 for
  p = 16). Exactly 4 ``out_indices`` are required (ValueError otherwise); use
  :meth:`get_intermediate_layers` for other choices.
"""
import functools
import logging

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model import BaseModule
from torch import nn
from torch.utils.checkpoint import checkpoint

from soma.peft.config import (DEFAULT_LAYERS_PATTERN, DEFAULT_START_LORA_IDX,
                              DEFAULT_TARGET_MODULES)
from soma.registry import register_model

from .pyramid import PYRAMID_SCALES, feature_pyramid, patch_tokens_to_map

__all__ = ['DinoVisionTransformer', 'ARCH_SETTINGS']

# DINOv2's vit_small / vit_base / vit_large / vit_giant2
ARCH_SETTINGS = {
    'small': dict(embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, ffn_layer='mlp'),
    'base': dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0, ffn_layer='mlp'),
    'large': dict(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0, ffn_layer='mlp'),
    'giant': dict(embed_dim=1536, depth=40, num_heads=24, mlp_ratio=4.0,
                  ffn_layer='swiglufused'),
}
FFN_LAYERS = ('mlp', 'swiglu', 'swiglufused', 'identity')
ATTN_IMPLS = ('auto', 'sdpa', 'naive', 'xformers')


@functools.lru_cache(maxsize=None)
def _xformers_ops():
    """``xformers.ops`` when it can be imported, else None (imported on first use only)."""
    try:
        from xformers import ops  # optional, GPU only
    except (ImportError, OSError, RuntimeError):
        return None
    return ops


def _svd_at_construction(lora_cfg):
    """True when ``lora_cfg`` (dict or config object) asks for ``svd_init_on='construction'``."""
    if isinstance(lora_cfg, dict):
        return lora_cfg.get('svd_init_on') == 'construction'
    return getattr(lora_cfg, 'svd_init_on', None) == 'construction'


def _pair(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x, x)


class PatchEmbed(nn.Module):
    """Conv patchify (kernel = stride = patch): a remainder of H or W below one patch is
    dropped (the release), or with ``pad_to_patch`` zero-padded at the bottom/right."""

    def __init__(self, patch_size=16, in_chans=3, embed_dim=768, pad_to_patch=False):
        super().__init__()
        self.patch_size = patch_size
        self.pad_to_patch = pad_to_patch
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        """(B, C, H, W) -> tokens (B, h * w, D) and the grid (h, w)."""
        p = self.patch_size
        if self.pad_to_patch:
            pad_h, pad_w = -x.shape[-2] % p, -x.shape[-1] % p
            if pad_h or pad_w:
                x = F.pad(x, (0, pad_w, 0, pad_h))
        elif x.shape[-2] < p or x.shape[-1] < p:
            raise ValueError(f'input {tuple(x.shape[-2:])} is smaller than one {p}x{p} patch '
                             f'(pad it, or build the backbone with pad_to_patch=True)')
        x = self.proj(x)
        h, w = x.shape[-2:]
        return x.flatten(2).transpose(1, 2), (h, w)


class Attention(nn.Module):
    """Multi-head self-attention with separate ``q``, ``k``, ``v`` linears and ``proj``.

    ``attn_impl``: 'auto' uses xFormers' memory-efficient attention when xFormers is
    installed and the input is on CUDA, else PyTorch's ``scaled_dot_product_attention``;
    'sdpa' and 'xformers' force one; 'naive' is the explicit ``softmax(q k^T * scale) v``.
    """

    def __init__(self, dim, num_heads=8, qkv_bias=True, proj_bias=True, attn_impl='auto'):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.attn_impl = attn_impl
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def _impl(self, x):
        if self.attn_impl != 'auto':
            return self.attn_impl
        return 'xformers' if x.is_cuda and _xformers_ops() is not None else 'sdpa'

    def forward(self, x):
        B, N, C = x.shape
        shape = (B, N, self.num_heads, self.head_dim)
        q, k, v = (self.q(x).reshape(shape), self.k(x).reshape(shape), self.v(x).reshape(shape))
        impl = self._impl(x)
        if impl == 'xformers':
            ops = _xformers_ops()
            if ops is None:
                raise RuntimeError("attn_impl='xformers' but xformers cannot be imported")
            out = ops.memory_efficient_attention(q, k, v)  # (B, N, heads, head_dim)
        else:
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            if impl == 'sdpa':
                out = F.scaled_dot_product_attention(q, k, v)
            else:
                attn = (q * self.scale) @ k.transpose(-2, -1)
                out = attn.softmax(dim=-1) @ v
            out = out.transpose(1, 2)
        return self.proj(out.reshape(B, N, C))


class LayerScale(nn.Module):
    def __init__(self, dim, init_values=1e-5):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features, bias=True):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features, bias=bias)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class SwiGLUFFN(nn.Module):
    """DINOv2's (fused) SwiGLU: ``w3(silu(x1) * x2)`` with ``x1, x2 = w12(x).chunk(2)``.

    The hidden size is 2/3 of the MLP's, rounded up to a multiple of 8 (DINOv2's
    ``SwiGLUFFNFused``, which DINOv2 uses for both 'swiglu' and 'swiglufused').
    """

    def __init__(self, in_features, hidden_features, bias=True):
        super().__init__()
        hidden_features = (int(hidden_features * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(in_features, 2 * hidden_features, bias=bias)
        self.w3 = nn.Linear(hidden_features, in_features, bias=bias)

    def forward(self, x):
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class DropPath(nn.Module):
    """Stochastic depth per sample (identity at rate 0 or in eval mode)."""

    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True, proj_bias=True,
                 ffn_bias=True, drop_path=0.0, init_values=1e-5, ffn_layer='mlp',
                 attn_impl='auto'):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, proj_bias, attn_impl)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        if ffn_layer == 'mlp':
            self.mlp = Mlp(dim, hidden, bias=ffn_bias)
        elif ffn_layer in ('swiglu', 'swiglufused'):
            self.mlp = SwiGLUFFN(dim, hidden, bias=ffn_bias)
        else:  # 'identity'
            self.mlp = nn.Identity()
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x):
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


@register_model
class DinoVisionTransformer(BaseModule):
    """DINOv2 ViT for dense prediction (mmseg/mmdet backbone).

    Args:
        arch: 'small' | 'base' | 'large' | 'giant' (DINOv2's ViT-S/B/L/g); when given it
            overrides ``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio`` and ``ffn_layer``.
        img_size: training crop (int or (h, w)); ``pos_embed`` is stored at its patch grid.
        ffn_layer: 'mlp' | 'swiglu' | 'swiglufused' | 'identity'.
        drop_path_uniform: the same drop-path rate in every block instead of a linear ramp.
        block_chunks: accepted for config compatibility; blocks always stay one flat
            ``blocks`` list (keys ``blocks.<i>.*``, as in the converted checkpoints).
        init_values: LayerScale init (no LayerScale when 0/None).
        out_indices: the 4 blocks whose patch tokens ``forward`` returns (in block order,
            for the scales x4, x2, x1, x0.5; a block may repeat).
        interpolate_offset: added to the target grid when resizing ``pos_embed`` (DINOv2's
            0.1; 0 resizes to the exact size instead).
        with_cp: activation checkpointing of every block while training.
        attn_impl: 'auto' | 'sdpa' | 'naive' | 'xformers' (see :class:`Attention`).
        lora_cfg: the adapter config, stored as ``self.lora_cfg`` for the segmentor/detector
            (the backbone does not apply it; with ``svd_init_on='construction'`` the linears
            keep PyTorch's default init at construction, see the module docstring).
        pad_to_patch: zero-pad H and W up to a multiple of ``patch_size`` (default False:
            the remainder is dropped, as in the release).
        peft_cfg: a ``peft`` adapter config for the segmentor/detector instead of
            ``lora_cfg`` (``soma.models.adapters``); stored as ``self.peft_cfg``.
    """

    # the block container (timm's group_matcher): blocks are ``blocks.<i>.``; the release's
    layers_pattern = DEFAULT_LAYERS_PATTERN

    def __init__(self, arch=None, img_size=512, patch_size=16, in_chans=3, embed_dim=1024,
                 depth=24, num_heads=16, mlp_ratio=4.0, qkv_bias=True, ffn_bias=True,
                 proj_bias=True, drop_path_rate=0.0, drop_path_uniform=False, init_values=1e-5,
                 ffn_layer='mlp', block_chunks=0, out_indices=(7, 11, 15, 23),
                 interpolate_offset=0.1, with_cp=False, attn_impl='auto', init_cfg=None,
                 lora_cfg=None, pad_to_patch=False, peft_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if arch is not None:
            if arch not in ARCH_SETTINGS:
                raise ValueError(f'arch must be one of {sorted(ARCH_SETTINGS)}, got {arch!r}')
            preset = ARCH_SETTINGS[arch]
            embed_dim, depth, num_heads = preset['embed_dim'], preset['depth'], preset['num_heads']
            mlp_ratio, ffn_layer = preset['mlp_ratio'], preset['ffn_layer']
        if ffn_layer not in FFN_LAYERS:
            raise ValueError(f'ffn_layer must be one of {FFN_LAYERS}, got {ffn_layer!r}')
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f'attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}')
        if embed_dim % num_heads:
            raise ValueError(f'embed_dim {embed_dim} is not divisible by num_heads {num_heads}')
        out_indices = tuple(sorted(int(i) for i in out_indices))
        if len(out_indices) != len(PYRAMID_SCALES):
            raise ValueError(f'out_indices must name 4 blocks (one per output scale '
                             f'x4, x2, x1, x0.5), got {out_indices}')
        if not all(0 <= i < depth for i in out_indices):
            raise ValueError(f'out_indices {out_indices} out of range for depth {depth}')

        self.arch = arch
        self.embed_dim = self.num_features = embed_dim
        self.depth = self.n_blocks = depth
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.patch_grid = tuple(s // patch_size for s in _pair(img_size))
        self.num_tokens = 1
        self.out_indices = out_indices
        self.interpolate_offset = interpolate_offset
        self.with_cp = with_cp
        self.block_chunks = block_chunks
        self.lora_cfg = lora_cfg
        self.peft_cfg = peft_cfg  # a `peft` adapter config instead (soma.models.adapters)
        if block_chunks:
            print_log(f'block_chunks={block_chunks}: blocks stay one flat list (blocks.<i>.*)',
                      logger='current', level=logging.DEBUG)

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, pad_to_patch)
        num_patches = self.patch_grid[0] * self.patch_grid[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        if drop_path_uniform:
            dpr = [drop_path_rate] * depth
        else:
            dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth)]
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, proj_bias, ffn_bias, dpr[i],
                  init_values, ffn_layer, attn_impl) for i in range(depth)
        ])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        # the release SVDs its adapters at build time, on the linears' PyTorch default init
        self._init_dinov2_weights(linears=not _svd_at_construction(lora_cfg))

    def adapter_defaults(self) -> dict:
        """Where adapters go on this backbone when a config does not say: the release's
        ``layers_pattern``, ``target_modules`` and first adapted block."""
        return dict(layers_pattern=self.layers_pattern,
                    target_modules=list(DEFAULT_TARGET_MODULES),
                    start_lora_idx=DEFAULT_START_LORA_IDX)

    # ---------------------------------------------------------------- initialisation
    def _init_dinov2_weights(self, linears=True):
        """DINOv2's init: pos_embed trunc-normal(0.02), cls_token normal(1e-6), mask_token 0,
        and (``linears``) every Linear trunc-normal(0.02) with zero bias (adapter ``lora_*``
        linears skipped)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.zeros_(self.mask_token)
        if not linears:
            return
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear) and 'lora' not in name:
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def init_weights(self):
        """Load ``init_cfg=dict(type='Pretrained', checkpoint=...)`` through mmengine, or
        (no Pretrained entry) re-apply DINOv2's random initialisation."""
        cfgs = self.init_cfg if isinstance(self.init_cfg, list) else [self.init_cfg or {}]
        if not self._is_init and not any(c.get('type') == 'Pretrained' for c in cfgs):
            self._init_dinov2_weights()
        super().init_weights()

    # ---------------------------------------------------------------- tokens
    def interpolate_pos_encoding(self, x, h, w):
        """``pos_embed`` for a ``h x w`` patch grid (cls first), in ``x``'s dtype."""
        gh, gw = self.patch_grid
        if (h, w) == (gh, gw):
            return self.pos_embed
        pos_embed = self.pos_embed.float()
        dim = pos_embed.shape[-1]
        patch_pos = pos_embed[:, 1:].reshape(1, gh, gw, dim).permute(0, 3, 1, 2)
        if self.interpolate_offset:
            # DINOv2's historical offset: the op samples with this exact scale factor
            size_kw = dict(scale_factor=((h + self.interpolate_offset) / gh,
                                         (w + self.interpolate_offset) / gw))
        else:
            size_kw = dict(size=(h, w))
        patch_pos = F.interpolate(patch_pos, mode='bicubic', align_corners=False, **size_kw)
        assert patch_pos.shape[-2:] == (h, w), (patch_pos.shape, h, w)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, h * w, dim)
        return torch.cat((pos_embed[:, :1], patch_pos), dim=1).to(x.dtype)

    def prepare_tokens_with_masks(self, x, masks=None):
        """Image -> tokens (B, 1 + h * w, D) with pos embedding, and the grid (h, w).

        ``masks`` (B, h * w, bool): those patch tokens are replaced by ``mask_token``.
        """
        B = x.shape[0]
        x, (h, w) = self.patch_embed(x)
        if masks is not None:
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)
        return x + self.interpolate_pos_encoding(x, h, w), (h, w)

    def _run_block(self, blk, x):
        if self.with_cp and self.training and torch.is_grad_enabled():
            return checkpoint(blk, x, use_reentrant=False)
        return blk(x)

    def _to_map(self, x, h, w):
        return patch_tokens_to_map(x[:, self.num_tokens:], h, w)

    # ---------------------------------------------------------------- outputs
    def forward_features(self, x, masks=None):
        """DINOv2's dict: final-normed cls/patch tokens, the pre-norm tokens and the masks."""
        x, _ = self.prepare_tokens_with_masks(x, masks)
        for blk in self.blocks:
            x = self._run_block(blk, x)
        x_norm = self.norm(x)
        return {
            'x_norm_clstoken': x_norm[:, 0],
            'x_norm_patchtokens': x_norm[:, self.num_tokens:],
            'x_prenorm': x,
            'masks': masks,
        }

    def get_intermediate_layers(self, x, n=1, reshape=False, return_class_token=False,
                                norm=True):
        """Patch tokens after the last ``n`` blocks (int) or after the blocks listed in ``n``.

        Each output is (B, h * w, D), or (B, D, h, w) with ``reshape``; with
        ``return_class_token`` each output is a pair (patch tokens, cls token).
        """
        x, (h, w) = self.prepare_tokens_with_masks(x)
        wanted = range(self.depth - n, self.depth) if isinstance(n, int) else n
        wanted = {i % self.depth for i in wanted}
        outputs = []
        for i, blk in enumerate(self.blocks):
            x = self._run_block(blk, x)
            if i in wanted:
                outputs.append(self.norm(x) if norm else x)
        if len(outputs) != len(wanted):
            raise ValueError(f'only {len(outputs)} of the {len(wanted)} requested blocks exist')
        class_tokens = [out[:, 0] for out in outputs]
        if reshape:
            outputs = [self._to_map(out, h, w) for out in outputs]
        else:
            outputs = [out[:, self.num_tokens:] for out in outputs]
        if return_class_token:
            return tuple(zip(outputs, class_tokens))
        return tuple(outputs)

    def forward(self, x):
        """(B, C, H, W) -> 4 contiguous maps (B, D, s * h, s * w) for s = 4, 2, 1, 0.5, where
        h, w = H // p, W // p (ceil with ``pad_to_patch``): the patch tokens after
        ``out_indices``, no final norm (sizes of the x0.5 map rounded down).
        """
        x, (h, w) = self.prepare_tokens_with_masks(x)
        maps = {}
        for i, blk in enumerate(self.blocks[:self.out_indices[-1] + 1]):
            x = self._run_block(blk, x)
            if i in self.out_indices:
                maps[i] = self._to_map(x, h, w)
        return feature_pyramid([maps[i] for i in self.out_indices])

    def extra_repr(self):
        return (f'arch={self.arch}, patch_size={self.patch_size}, patch_grid={self.patch_grid}, '
                f'out_indices={self.out_indices}, with_cp={self.with_cp}, '
                f'pad_to_patch={self.patch_embed.pad_to_patch}')

