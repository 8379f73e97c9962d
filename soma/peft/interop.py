"""A SoMA model as a standard ``peft`` LoRA adapter on top of its residual base weights.

A ``SoMALinear`` computes ``x W^T + b + (alpha / r) * (dropout(x) A^T) B^T``, which is exactly
what a ``peft`` LoRA layer computes on a base linear whose weight is ``W`` (no DoRA, no
rsLoRA). So any SoMA model, whatever its init and training, exports as:

* ``adapter_config.json``: a ``peft.LoraConfig`` with the same ``r``, ``lora_alpha``,
  ``lora_dropout`` and target layers: the ``target_modules`` suffixes with
  ``layers_to_transform`` (the adapted block indices, from ``start_lora_idx``) and
  ``layers_pattern``, and ``rank_pattern`` for the layers of another rank (``rank_ramp``; peft
  then scales them by ``lora_alpha / rank`` as SoMA does). When peft's own name rules would
  pick other layers (a regex ``target_modules``, no block pattern), the exact layer names are
  listed instead; the export checks peft's matching against the adapted set either way;
* ``adapter_model.safetensors``: ``lora_A``/``lora_B`` in peft's key layout
  (``base_model.model.<layer>.lora_A.weight``, r x in; ``lora_B``, out x r);
* ``residual_base.safetensors``: the state dict of the base model without adapter keys, i.e.
  the stored (unmerged) weights W_res, with the trained biases and mask token.

Loading: build the same architecture plainly, load ``residual_base.safetensors`` into it, then
``peft.PeftModel.from_pretrained(base, folder)``: its outputs equal the SoMA model's (float
rounding). How far it goes: the function and the adapter weights carry over; the SVD init
does not (peft's own init is not used, the exported weights are), nor SoMA's freezing rules
(peft trains only ``lora_*`` with ``bias='none'``; the base holds the trained biases and
mask token as frozen weights), nor the base weights themselves: the adapter alone is
meaningless on the original pretrained weights (it needs W_res; for a checkpoint of the
release's semantics the stored weight is W_pretrained and the same export holds).
``peft`` is imported only inside these functions.

The adapters a peft user can share, over the PUBLIC pretrained weights (no residual base):
:func:`export_peft_delta` / :func:`save_peft_delta` write the trained change as a LoRA on
``W_pretrained``, as peft does for PiSSA (``save_pretrained(...,
path_initial_model_for_weight_conversion=...)``). For the 'residual' semantics, with
``B0, A0`` the SoMA initialisation of ``W_pretrained`` (``W_res = W_pre - s*B0@A0``):
``W_res + s*B@A = W_pre + s*[B | -B0] @ [A ; A0]``: rank 2r, same scale s (peft:
``r' = 2r``, ``lora_alpha' = 2*lora_alpha``, ``rank_pattern`` doubled). For 'release' the
change is ``s*B@A`` (rank r). The folder holds ``adapter_config.json`` and
``adapter_model.safetensors`` with ``lora_A``/``lora_B`` and the trained biases of the
adapted layers (``bias='lora_only'``: peft loads ``<layer>.base_layer.bias`` into the base
layer). Load: ``PeftModel.from_pretrained(<plain model with the converted weights>, dir)``.
Not carried: the ``mask_token`` (used only with token masks, never by segmentation) and
``modules_to_save``.
"""
import os
import os.path as osp
import re
from typing import Dict, Optional, Tuple

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from soma.utils.atomic import atomic_output_dir

from .config import ADAPTER_KEYWORD
from .layer import LORA_A, LORA_B
from .model import SoMAModel, adapted_layers, block_index

__all__ = ['PEFT_PREFIX', 'to_lora_config', 'export_peft_adapter', 'save_peft_adapter',
           'export_peft_delta', 'save_peft_delta', 'load_peft_adapter_weights',
           'ADAPTER_CONFIG_NAME', 'ADAPTER_WEIGHTS_NAME', 'RESIDUAL_BASE_NAME']

PEFT_PREFIX = 'base_model.model.'  # peft's key prefix in saved adapters
ADAPTER_CONFIG_NAME = 'adapter_config.json'
ADAPTER_WEIGHTS_NAME = 'adapter_model.safetensors'
RESIDUAL_BASE_NAME = 'residual_base.safetensors'
PEFT_FOLDER_FILES = (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, RESIDUAL_BASE_NAME)
# peft's LoRA keys in a saved adapter: base_model.model.<layer>.lora_A.weight (SoMA's names)
PEFT_LORA_A, PEFT_LORA_B = f'.{LORA_A}.weight', f'.{LORA_B}.weight'
PEFT_BASE_BIAS = '.base_layer.bias'


def _peft_matches(lora_config, model: nn.Module):
    from peft.tuners.tuners_utils import check_target_module_exists  # peft: optional
    return {n for n, _ in model.named_modules()
            if n and check_target_module_exists(lora_config, n) is True}


def to_lora_config(soma_model: SoMAModel, rank_factor: int = 1, bias: str = 'none'):
    """The ``peft.LoraConfig`` that adapts the same layers with the same ranks and scales.

    ``rank_factor``: every rank and ``lora_alpha`` times this (the scale stays), e.g. 2 for
    the rank-2r delta of :func:`export_peft_delta`. ``bias``: peft's bias mode.
    """
    from peft import LoraConfig  # peft: optional dependency
    config = soma_model.peft_config
    layers = adapted_layers(soma_model.model)
    rank_pattern = {re.escape(n): m.r * rank_factor for n, m in layers.items()
                    if m.r != config.r}
    common = dict(r=config.r * rank_factor, lora_alpha=config.lora_alpha * rank_factor,
                  lora_dropout=config.lora_dropout, rank_pattern=rank_pattern, bias=bias,
                  fan_in_fan_out=False)
    if isinstance(config.target_modules, list) and config.layers_pattern is not None:
        indices = sorted({block_index(n, config.layers_pattern) for n in layers})
        lora_config = LoraConfig(target_modules=list(config.target_modules),
                                 layers_to_transform=indices,
                                 layers_pattern=config.layers_pattern, **common)
        if _peft_matches(lora_config, soma_model.model) == set(layers):
            return lora_config
    elif isinstance(config.target_modules, list):
        lora_config = LoraConfig(target_modules=list(config.target_modules), **common)
        if _peft_matches(lora_config, soma_model.model) == set(layers):
            return lora_config
    lora_config = LoraConfig(target_modules=sorted(layers), **common)
    if _peft_matches(lora_config, soma_model.model) != set(layers):
        raise ValueError('to_lora_config: peft cannot address the adapted layers by name')
    return lora_config


def export_peft_adapter(soma_model: SoMAModel
                        ) -> Tuple[object, Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """``(LoraConfig, adapter state dict in peft's layout, residual base state dict)``."""
    if not isinstance(soma_model, SoMAModel):
        raise TypeError(
            f'export_peft_adapter: expected a SoMAModel, got {type(soma_model).__name__}')
    lora_config = to_lora_config(soma_model)
    adapter = {}
    for name, layer in adapted_layers(soma_model.model).items():
        adapter[f'{PEFT_PREFIX}{name}{PEFT_LORA_A}'] = layer.lora_A.weight.detach().clone()
        adapter[f'{PEFT_PREFIX}{name}{PEFT_LORA_B}'] = layer.lora_B.weight.detach().clone()
    base = {k: v.detach().clone() for k, v in soma_model.model.state_dict().items()
            if ADAPTER_KEYWORD not in k}
    return lora_config, adapter, base


def _write_peft_folder(directory: str, lora_config, tensor_files: Dict[str, dict]
                       ) -> Dict[str, str]:
    """``adapter_config.json`` plus one safetensors file per ``{file name: tensors}``, written
    as one folder that appears complete or not at all (an earlier export is replaced);
    ``{file name: path}``."""
    directory = os.fspath(directory)
    names = (ADAPTER_CONFIG_NAME, *tensor_files)
    with atomic_output_dir(directory, replaceable=PEFT_FOLDER_FILES) as tmp:
        for name, tensors in tensor_files.items():
            save_file({k: v.contiguous() for k, v in tensors.items()}, osp.join(tmp, name))
        lora_config.save_pretrained(tmp)  # peft's own json writer: adapter_config.json
    return {name: osp.join(directory, name) for name in names}


def save_peft_adapter(soma_model: SoMAModel, directory: str) -> Dict[str, str]:
    """Write the peft adapter folder (config, adapter weights, residual base); return paths."""
    lora_config, adapter, base = export_peft_adapter(soma_model)
    return _write_peft_folder(directory, lora_config, {ADAPTER_WEIGHTS_NAME: adapter,
                                                       RESIDUAL_BASE_NAME: base})


def export_peft_delta(soma_model: SoMAModel,
                      initial: Optional[Dict[str, Tuple[torch.Tensor, torch.Tensor]]] = None
                      ) -> Tuple[object, Dict[str, torch.Tensor]]:
    """``(LoraConfig, adapter state dict)``: the model as a LoRA over the pretrained weights.

    ``initial``: ``{layer name: (B0, A0)}``, the SoMA initialisation of W_pretrained, for a
    model of 'residual' semantics (its weights are W_res): the adapter is
    ``[B | -B0] @ [A ; A0]`` of rank 2r with ``lora_alpha`` doubled (same scale). ``None``:
    the model's weights are W_pretrained ('release') and the adapter is ``B @ A`` (rank r).
    The biases of the adapted layers go in as ``<layer>.base_layer.bias`` (``bias='lora_only'``).
    """
    if not isinstance(soma_model, SoMAModel):
        raise TypeError(
            f'export_peft_delta: expected a SoMAModel, got {type(soma_model).__name__}')
    if soma_model.peft_config.modules_to_save:
        raise ValueError('export_peft_delta: modules_to_save '
                         f'{soma_model.peft_config.modules_to_save} cannot be carried')
    layers = adapted_layers(soma_model.model)
    if initial is not None and set(initial) != set(layers):
        missing = sorted(set(layers) - set(initial)) or sorted(set(initial) - set(layers))
        raise ValueError(f'export_peft_delta: initial adapters and adapted layers differ '
                         f'(e.g. {missing[0]})')
    lora_config = to_lora_config(soma_model, rank_factor=1 if initial is None else 2,
                                 bias='lora_only')
    adapter = {}
    for name, layer in layers.items():
        lora_a, lora_b = layer.lora_A.weight.detach(), layer.lora_B.weight.detach()
        if initial is not None:
            lora_b0, lora_a0 = initial[name]
            if lora_a0.shape != lora_a.shape or lora_b0.shape != lora_b.shape:
                raise ValueError(f'export_peft_delta: {name}: initial adapters of shapes '
                                 f'{tuple(lora_b0.shape)}, {tuple(lora_a0.shape)} do not fit '
                                 f'{tuple(lora_b.shape)}, {tuple(lora_a.shape)}')
            lora_a = torch.cat([lora_a, lora_a0.to(lora_a)], dim=0)
            lora_b = torch.cat([lora_b, -lora_b0.to(lora_b)], dim=1)
        adapter[f'{PEFT_PREFIX}{name}{PEFT_LORA_A}'] = lora_a.clone()
        adapter[f'{PEFT_PREFIX}{name}{PEFT_LORA_B}'] = lora_b.clone()
        if layer.bias is not None:
            adapter[f'{PEFT_PREFIX}{name}{PEFT_BASE_BIAS}'] = layer.bias.detach().clone()
    return lora_config, adapter


def save_peft_delta(soma_model: SoMAModel, directory: str,
                    initial: Optional[Dict[str, Tuple[torch.Tensor, torch.Tensor]]] = None
                    ) -> Dict[str, str]:
    """Write :func:`export_peft_delta` as a peft folder (config + adapter); return paths."""
    lora_config, adapter = export_peft_delta(soma_model, initial)
    return _write_peft_folder(directory, lora_config, {ADAPTER_WEIGHTS_NAME: adapter})


def load_peft_adapter_weights(directory: str) -> Dict[str, Dict[str, torch.Tensor]]:
    """``{layer name: {'lora_A', 'lora_B'[, 'bias']}}`` of a peft folder (no peft needed)."""
    path = osp.join(os.fspath(directory), ADAPTER_WEIGHTS_NAME)
    if not osp.isfile(path):
        raise FileNotFoundError(f'peft adapter folder: {path} not found')
    layers = {}
    for key, value in load_file(path).items():
        rest = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        for suffix, slot in ((PEFT_LORA_A, LORA_A), (PEFT_LORA_B, LORA_B),
                             (PEFT_BASE_BIAS, 'bias')):
            if rest.endswith(suffix):
                layers.setdefault(rest[:-len(suffix)], {})[slot] = value
    if not layers:
        raise ValueError(f'{path}: no lora_A/lora_B keys; not a peft LoRA adapter')
    return layers
