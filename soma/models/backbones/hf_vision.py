"""Hugging Face ``transformers`` vision transformers as mmseg/mmdet backbones.

:class:`HFVisionBackbone` wraps one of the ViT-style encoders that ``transformers`` maintains
(``DINOv3ViTModel``, ``Dinov2Model``, ``Dinov2WithRegistersModel``, ``Siglip2VisionModel``)
and gives what :class:`~soma.models.backbones.dinov2.DinoVisionTransformer` gives: the patch
tokens (CLS and register tokens dropped) after the 4 blocks ``out_indices``, without the final
norm, as maps at the patch stride resampled bilinearly by x4, x2, x1, x0.5.

The transformers model is ``self.hf_model`` (state-dict keys ``hf_model.*``); with SoMA the
segmentor wraps this backbone (``backbone.model.hf_model.*``) and ``merge_and_unload()`` gives
back a backbone whose ``hf_model`` is a plain transformers model (``save_pretrained`` works).

Weights: ``model='path/to/folder'`` loads them with ``from_pretrained`` at construction;
``model=dict(model_type=..., **config_fields)`` initialises them randomly (transformers' init).
mmengine's ``init_weights()`` never reaches ``hf_model.init_weights()`` (transformers' one
re-initialises tensors it did not load itself): only this module's ``init_cfg`` is applied.

``lora_cfg`` is completed with the family's defaults where it is silent: ``layers_pattern``
(the block container, ``layer`` / ``layers``), ``target_modules`` (every linear of a block)
and ``start_lora_idx`` (the first third of the blocks frozen).

``dtype`` sets the weights' dtype (float32 unless given, whatever the folder stores; e.g.
``'bfloat16'`` for DINOv3-7B): inputs are cast to it, the maps back to the input's dtype.

DINOv3 in train mode jitters its RoPE coordinates as its config says (``pos_embed_shift``,
``pos_embed_jitter``, ``pos_embed_rescale``; transformers' default rescale is 2.0): set them
in the ``model`` dict, or in the folder's ``config.json``, to change that.
"""
import json
import os
import os.path as osp
from typing import NamedTuple, Tuple

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule

from soma.registry import register_model

from .pyramid import PYRAMID_SCALES, feature_pyramid, patch_tokens_to_map

__all__ = ['HFVisionBackbone', 'HF_FAMILIES', 'HF_MODEL_PREFIX', 'build_hf_vision_model',
           'hf_backbone_weights', 'hf_backbone_state_dict']

HF_MODEL_PREFIX = 'hf_model.'  # HFVisionBackbone holds the transformers model as .hf_model


class HFFamily(NamedTuple):
    """What the wrapper needs to know about one transformers model type."""
    model_class: str  # class name in ``transformers``
    layers_pattern: str  # block container: blocks are ``<layers_pattern>.<i>.``
    target_modules: Tuple[str, ...]  # every linear of a block (absent ones never match)
    patchified_input: bool  # forward takes flattened patches + mask + spatial shapes
    config_overrides: tuple = ()  # (key, value) pairs forced on the config


HF_FAMILIES = {
    'dinov3_vit': HFFamily(
        'DINOv3ViTModel', 'layer',
        ('q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'), False),
    'dinov2': HFFamily(
        'Dinov2Model', 'layer',
        ('q_proj', 'k_proj', 'v_proj', 'o_proj', 'fc1', 'fc2', 'gate_proj', 'up_proj',
         'down_proj'), False),
    'dinov2_with_registers': HFFamily(
        'Dinov2WithRegistersModel', 'layer',
        ('q_proj', 'k_proj', 'v_proj', 'o_proj', 'fc1', 'fc2', 'gate_proj', 'up_proj',
         'down_proj'), False),
    # the attention-pooling head is never used for dense features: not built
    'siglip2_vision_model': HFFamily(
        'Siglip2VisionModel', 'layers', ('q_proj', 'k_proj', 'v_proj', 'out_proj', 'fc1', 'fc2'),
        True, (('vision_use_head', False),)),
}
# a SigLIP2 image-text folder (e.g. google/siglip2-*): its vision tower, the text part unused
HF_FAMILIES['siglip2'] = HF_FAMILIES['siglip2_vision_model']


def _family_of(model_type, where):
    if model_type not in HF_FAMILIES:
        raise ValueError(f'HFVisionBackbone: model_type {model_type!r} of {where} is not a '
                         f'supported ViT-style vision encoder; supported: {sorted(HF_FAMILIES)}')
    return HF_FAMILIES[model_type]


def _torch_dtype(dtype):
    """``None`` -> float32; a ``torch.dtype`` or its name ('bfloat16', 'torch.float16')."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).replace('torch.', ''), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f'HFVisionBackbone: dtype {dtype!r} is not a torch floating point '
                         f"dtype (e.g. 'float32', 'bfloat16')")
    return value


def build_hf_vision_model(model, dtype=None):
    """``(transformers model, family)`` from a folder (``from_pretrained``) or a config dict
    with ``model_type`` (random initialisation), its weights in ``dtype`` (default float32,
    whatever dtype the folder stores). A folder's ``config.json`` is read once."""
    import transformers  # optional dependency, heavy
    dtype = _torch_dtype(dtype)
    if isinstance(model, dict):
        fields, where, folder = dict(model), 'the model dict', None
    elif isinstance(model, (str, os.PathLike)):
        folder = os.fspath(model)
        where = osp.join(folder, 'config.json')
        if not osp.isfile(where):
            raise FileNotFoundError(
                f'HFVisionBackbone: {where} not found (model must be a transformers folder '
                f'with config.json and weights, as save_pretrained writes it)')
        with open(where, encoding='utf-8') as f:
            fields = json.load(f)
        if not isinstance(fields, dict):
            raise ValueError(f'HFVisionBackbone: {where} holds no JSON object')
    else:
        raise TypeError(f'HFVisionBackbone: model must be a folder or a config dict, '
                        f'got {type(model).__name__}')
    if fields.get('model_type') is None:
        raise ValueError(f'HFVisionBackbone: {where} needs a model_type, got keys '
                         f'{sorted(fields)}')
    family = _family_of(fields['model_type'], where)
    model_class = getattr(transformers, family.model_class)
    config = transformers.AutoConfig.for_model(**fields)
    if not isinstance(config, model_class.config_class):  # an image-text folder: its vision part
        config = config.vision_config
    for key, value in family.config_overrides:
        setattr(config, key, value)
    if folder is None:
        return model_class._from_config(config, dtype=dtype), family
    return model_class.from_pretrained(folder, config=config, dtype=dtype), family


def hf_backbone_weights(folder):
    """``(state dict, family)``: the weights ``HFVisionBackbone(model=folder)`` starts from,
    keyed as in its state dict (``hf_model.<transformers key>``, float32)."""
    model, family = build_hf_vision_model(folder)
    return {HF_MODEL_PREFIX + k: v for k, v in model.state_dict().items()}, family


def hf_backbone_state_dict(folder):
    """The "converted backbone" of an HF backbone: :func:`hf_backbone_weights` of its folder."""
    return hf_backbone_weights(folder)[0]


@register_model
class HFVisionBackbone(BaseModule):
    """A transformers ViT as a dense backbone (see the module docstring).

    Args:
        model: a transformers folder (``config.json`` + weights) or a dict with ``model_type``
            and config fields (random init), e.g. ``dict(model_type='dinov3_vit', ...)``.
        out_indices: the 4 blocks (0-based, in block order) whose patch tokens give the maps
            x4, x2, x1, x0.5.
        lora_cfg: SoMA config for the PEFT segmentor/detector (completed with the family's
            ``layers_pattern``, ``target_modules`` and ``start_lora_idx = depth // 3``
            where not given); the backbone does not apply it.
        gradient_checkpointing: activation checkpointing of every block while training.
        dtype: dtype of the transformers model's weights (default float32, also for a folder
            saved in bf16), e.g. ``'bfloat16'`` to halve the weight memory of a large model;
            inputs are cast to it and the maps back to the input's dtype.
        pad_to_patch: zero-pad an input whose sides are not multiples of the patch at the
            bottom/right (maps of ``ceil(H / p) x ceil(W / p)`` tokens); default False: such
            an input is an error.
        init_cfg: mmengine init config of this module (e.g. Pretrained on an mmengine
            checkpoint with ``hf_model.*`` keys); the HF model is never re-initialised.
    """

    def __init__(self, model, out_indices=(7, 11, 15, 23), lora_cfg=None,
                 gradient_checkpointing=False, pad_to_patch=False, dtype=None,
                 init_cfg=None, peft_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.hf_model, family = build_hf_vision_model(model, dtype)
        # already initialised (from_pretrained / from_config); keeps mmengine's init_weights()
        # recursion out of transformers' PreTrainedModel.init_weights()
        self.hf_model.is_init = True
        self.loads_pretrained_weights = not isinstance(model, dict)
        config = self.hf_model.config
        self.model_type = config.model_type
        self.family = family
        self.depth = config.num_hidden_layers
        self.embed_dim = self.num_features = config.hidden_size
        self.patch_size = int(config.patch_size)
        self.num_prefix_tokens = (0 if family.patchified_input
                                  else 1 + int(getattr(config, 'num_register_tokens', 0) or 0))
        out_indices = tuple(int(i) for i in out_indices)
        if len(out_indices) != len(PYRAMID_SCALES):
            raise ValueError(f'HFVisionBackbone: out_indices must name 4 blocks (one per output '
                             f'scale x4, x2, x1, x0.5), got {out_indices}')
        if list(out_indices) != sorted(out_indices) or not all(
                0 <= i < self.depth for i in out_indices):
            raise ValueError(f'HFVisionBackbone: out_indices {out_indices} must be ascending '
                             f'block indices in 0..{self.depth - 1} ({self.model_type}, depth '
                             f'{self.depth})')
        self.out_indices = out_indices
        self.lora_cfg = self._complete_lora_cfg(lora_cfg)
        self.peft_cfg = peft_cfg  # a `peft` adapter instead (soma.models.adapters)
        self.gradient_checkpointing = gradient_checkpointing
        self.pad_to_patch = pad_to_patch
        if gradient_checkpointing:
            self.hf_model.activation_checkpointing_enable(
                activation_checkpointing_kwargs=dict(use_reentrant=False))

    @property
    def layers_pattern(self) -> str:
        """The block container (timm's group_matcher): blocks are ``<pattern>.<i>.``."""
        return self.family.layers_pattern

    def adapter_defaults(self) -> dict:
        """Where adapters go on this backbone when a config does not say: the family's block
        container and linears, and the first third of the blocks frozen."""
        return dict(layers_pattern=self.layers_pattern,
                    target_modules=list(self.family.target_modules),
                    start_lora_idx=self.depth // 3)

    def _complete_lora_cfg(self, lora_cfg):
        if not lora_cfg:
            return lora_cfg
        return dict(self.adapter_defaults(), **lora_cfg)

    def _hidden_states(self, x):
        """The transformers forward: ``depth + 1`` token tensors (0: embeddings), un-normed."""
        if not self.family.patchified_input:
            return self.hf_model(pixel_values=x, output_hidden_states=True).hidden_states
        # Siglip2 takes flattened patches in (row, column, channel) order, as its processor
        B, C, H, W = x.shape
        p, h, w = self.patch_size, H // self.patch_size, W // self.patch_size
        patches = x.reshape(B, C, h, p, w, p).permute(0, 2, 4, 3, 5, 1).reshape(B, h * w, -1)
        mask = torch.ones(B, h * w, dtype=torch.long, device=x.device)
        shapes = torch.tensor([[h, w]] * B, dtype=torch.long, device=x.device)
        return self.hf_model(pixel_values=patches, pixel_attention_mask=mask,
                             spatial_shapes=shapes, output_hidden_states=True).hidden_states

    def forward(self, x):
        """(B, C, H, W), H and W multiples of the patch -> 4 contiguous maps
        (B, D, s * H / p, s * W / p) for s = 4, 2, 1, 0.5 (x0.5 sizes rounded down)."""
        p = self.patch_size
        if self.pad_to_patch and (x.shape[-2] % p or x.shape[-1] % p):
            x = F.pad(x, (0, -x.shape[-1] % p, 0, -x.shape[-2] % p))
        H, W = x.shape[-2:]
        if H % p or W % p or H == 0 or W == 0:
            raise ValueError(f'HFVisionBackbone: input {H}x{W} is not a multiple of the patch '
                             f'size {p} (pad or resize it, or set pad_to_patch=True)')
        h, w = H // p, W // p
        in_dtype = x.dtype
        hidden_states = self._hidden_states(x.to(self.hf_model.dtype))
        return feature_pyramid([
            patch_tokens_to_map(hidden_states[i + 1][:, self.num_prefix_tokens:], h, w)
            .to(in_dtype) for i in self.out_indices])

    def extra_repr(self):
        return (f'model_type={self.model_type}, patch_size={self.patch_size}, '
                f'dtype={self.hf_model.dtype}, '
                f'out_indices={self.out_indices}, '
                f'gradient_checkpointing={self.gradient_checkpointing}, '
                f'pad_to_patch={self.pad_to_patch}')
