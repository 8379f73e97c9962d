"""The backbones SoMA runs on here, and their SoMA r=16 trainable-parameter counts.

:data:`SUPPORTED_BACKBONES` lists one row per released size: the family, the size, where the
weights come from, the config that uses it (if any) and the backbone keywords of that
architecture (an :class:`~soma.models.backbones.hf_vision.HFVisionBackbone` ``model`` dict,
or the release's :class:`~soma.models.backbones.dinov2.DinoVisionTransformer` keywords).
:func:`soma_trainable_parameters` builds the architecture (on the meta device where the
class allows it: no memory, no init), wraps it with SoMA as the PEFT models do and counts
the parameters that SoMA's rules leave trainable (adapters, target biases of the adapted
blocks, the mask token). :func:`supported_backbones_table` renders the README table from it.
"""
from typing import NamedTuple

import torch

from soma.models.peft_backbone import wrap_backbone_with_soma

from .dinov2 import DinoVisionTransformer
from .hf_vision import HFVisionBackbone

__all__ = ['SUPPORTED_BACKBONES', 'SOMA_R16', 'build_soma_backbone', 'soma_trainable_parameters',
           'supported_backbones_table']

# SoMA as the configs set it (r = lora_alpha = 16, target biases train); the target modules,
# block container and first adapted block (a third of the depth) are the family defaults
SOMA_R16 = dict(type='soma', r=16, lora_alpha=16, lora_dropout=0.0, bias='all')


class Backbone(NamedTuple):
    family: str
    size: str
    weights: str
    configs: tuple  # configs of this repository that use it
    model: dict  # HFVisionBackbone ``model`` dict (``model_type`` + config fields)


def _dinov3(width, depth, heads, ffn, gated=False, **fields):
    return dict(model_type='dinov3_vit', hidden_size=width, num_hidden_layers=depth,
                num_attention_heads=heads, intermediate_size=ffn, patch_size=16,
                num_register_tokens=4, use_gated_mlp=gated,
                hidden_act='silu' if gated else 'gelu', **fields)


def _dinov2(width, depth, heads, registers=False, swiglu=False):
    fields = dict(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
                  patch_size=14, image_size=518, use_swiglu_ffn=swiglu)
    if registers:
        return dict(model_type='dinov2_with_registers', num_register_tokens=4, **fields)
    return dict(model_type='dinov2', **fields)


def _siglip2(width, depth, heads, ffn):
    return dict(model_type='siglip2_vision_model', hidden_size=width, num_hidden_layers=depth,
                num_attention_heads=heads, intermediate_size=ffn, patch_size=16,
                num_patches=256)


_V3 = 'facebook/dinov3-{}-pretrain-lvd1689m (HF), or the official .pth via convert_dinov3.py'
_V2 = 'facebook/dinov2-{} (HF)'
_V2R = 'facebook/dinov2-with-registers-{} (HF)'
_S2 = 'google/siglip2-{}-patch16-naflex (HF)'
_CFG = 'configs/soma/'
SUPPORTED_BACKBONES = [
    Backbone('DINOv2 (release backbone)', 'ViT-L/14 -> 16', 'dinov2_vitl14_pretrain.pth via '
             'convert_dinov2_sora.py', (_CFG + 'soma_dinov2-L_mask2former.py',),
             dict(model_type='release_dinov2', img_size=512, patch_size=16, embed_dim=1024,
                  depth=24, num_heads=16, mlp_ratio=4, ffn_layer='mlp', init_values=1e-5,
                  block_chunks=0, out_indices=[7, 11, 15, 23],
                  target_modules=['q', 'k', 'v', 'proj', 'fc1', 'fc2'])),
    Backbone('DINOv3', 'ViT-S/16', _V3.format('vits16'), (), _dinov3(384, 12, 6, 1536)),
    Backbone('DINOv3', 'ViT-S+/16', _V3.format('vits16plus'), (),
             _dinov3(384, 12, 6, 1536, gated=True)),
    Backbone('DINOv3', 'ViT-B/16', _V3.format('vitb16'), (), _dinov3(768, 12, 12, 3072)),
    Backbone('DINOv3', 'ViT-L/16', _V3.format('vitl16'),
             (_CFG + 'soma_dinov3-L_mask2former.py',
              _CFG + 'soma_dinov3-L_mask2former_gsu2cbm.py',
              _CFG + 'soma_dinov3-L_mask2former_gsu2cbm_1024x1024.py',
              'DGOD/configs/soma/soma_dinov3-L_codetr_dg.py'), _dinov3(1024, 24, 16, 4096)),
    Backbone('DINOv3', 'ViT-H+/16', _V3.format('vith16plus'), (),
             _dinov3(1280, 32, 20, 5120, gated=True)),
    # official vit_7b: ffn_ratio 3 with SwiGLU (2/3 of 3 x 4096 = 8192), no q/k/v biases
    Backbone('DINOv3', 'ViT-7B/16', _V3.format('vit7b16'),
             (_CFG + 'soma_dinov3-7B_mask2former.py',),
             _dinov3(4096, 40, 32, 8192, gated=True, query_bias=False, value_bias=False)),
    Backbone('DINOv2 (transformers)', 'ViT-S/14', _V2.format('small'), (),
             _dinov2(384, 12, 6)),
    Backbone('DINOv2 (transformers)', 'ViT-B/14', _V2.format('base'), (),
             _dinov2(768, 12, 12)),
    Backbone('DINOv2 (transformers)', 'ViT-L/14', _V2.format('large'),
             (_CFG + 'soma_hf-dinov2-L_mask2former.py',), _dinov2(1024, 24, 16)),
    Backbone('DINOv2 (transformers)', 'ViT-g/14', _V2.format('giant'), (),
             _dinov2(1536, 40, 24, swiglu=True)),
    Backbone('DINOv2 + registers (transformers)', 'ViT-S/14', _V2R.format('small'), (),
             _dinov2(384, 12, 6, registers=True)),
    Backbone('DINOv2 + registers (transformers)', 'ViT-B/14', _V2R.format('base'), (),
             _dinov2(768, 12, 12, registers=True)),
    Backbone('DINOv2 + registers (transformers)', 'ViT-L/14', _V2R.format('large'),
             (_CFG + 'soma_hf-dinov2reg-L_mask2former.py',),
             _dinov2(1024, 24, 16, registers=True)),
    Backbone('DINOv2 + registers (transformers)', 'ViT-g/14', _V2R.format('giant'), (),
             _dinov2(1536, 40, 24, registers=True, swiglu=True)),
    Backbone('SigLIP2 (vision tower)', 'ViT-B/16', _S2.format('base'),
             (_CFG + 'soma_hf-siglip2-B_mask2former.py',), _siglip2(768, 12, 12, 3072)),
    Backbone('SigLIP2 (vision tower)', 'So400m/16', _S2.format('so400m'), (),
             _siglip2(1152, 27, 16, 4304)),
]


def _out_indices(depth):
    """Four blocks ending at the last one, spread as (7, 11, 15, 23) are for 24 blocks."""
    return [round(depth * f) - 1 for f in (1 / 3, 1 / 2, 2 / 3)] + [depth - 1]


def build_soma_backbone(model, lora_cfg=None):
    """The SoMA-wrapped backbone of ``model`` (a :data:`SUPPORTED_BACKBONES` ``model``
    dict), adapters not initialised, in train mode (SoMA's freezing applied)."""
    fields = dict(model)
    lora = dict(SOMA_R16, **(lora_cfg or {}))
    if fields.get('model_type') == 'release_dinov2':
        fields.pop('model_type')
        lora.update(type='sora', target_modules=fields.pop('target_modules'))
        # its constructor calls .item(): built on the CPU, then moved to the meta device
        backbone = DinoVisionTransformer(lora_cfg=lora, **fields).to('meta')
    else:
        with torch.device('meta'):
            backbone = HFVisionBackbone(model=fields, lora_cfg=lora,
                                        out_indices=_out_indices(fields['num_hidden_layers']))
    with torch.device('meta'):
        wrapped = wrap_backbone_with_soma(backbone)
    return wrapped.train()


def soma_trainable_parameters(model, lora_cfg=None):
    """Number of parameters SoMA (r=16 unless ``lora_cfg`` says otherwise) trains in the
    backbone ``model`` (see :func:`build_soma_backbone`)."""
    wrapped = build_soma_backbone(model, lora_cfg)
    return sum(p.numel() for p in wrapped.parameters() if p.requires_grad)


def supported_backbones_table():
    """The README's markdown table of :data:`SUPPORTED_BACKBONES` (counts computed)."""
    lines = ['| family | size | weights | config | SoMA r=16 trainable |',
             '|---|---|---|---|---|']
    for row in SUPPORTED_BACKBONES:
        config = ', '.join(f'`{c}`' for c in row.configs) or '- (set `model=` to the folder)'
        lines.append(f'| {row.family} | {row.size} | {row.weights} | {config} | '
                     f'{soma_trainable_parameters(row.model):,} |')
    return '\n'.join(lines)
