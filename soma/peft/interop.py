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
"""
import os
import os.path as osp
import re
import tempfile
from typing import Dict, Tuple

import torch
from torch import nn

from .config import ADAPTER_KEYWORD
from .model import SoMAModel, adapted_layers, block_index

__all__ = ['PEFT_PREFIX', 'to_lora_config', 'export_peft_adapter', 'save_peft_adapter',
           'ADAPTER_CONFIG_NAME', 'ADAPTER_WEIGHTS_NAME', 'RESIDUAL_BASE_NAME']

PEFT_PREFIX = 'base_model.model.'  # peft's key prefix in saved adapters
ADAPTER_CONFIG_NAME = 'adapter_config.json'
ADAPTER_WEIGHTS_NAME = 'adapter_model.safetensors'
RESIDUAL_BASE_NAME = 'residual_base.safetensors'


def _peft_matches(lora_config, model: nn.Module):
    from peft.tuners.tuners_utils import check_target_module_exists
    return {n for n, _ in model.named_modules()
            if n and check_target_module_exists(lora_config, n) is True}


def to_lora_config(soma_model: SoMAModel):
    """The ``peft.LoraConfig`` that adapts the same layers with the same ranks and scales."""
    from peft import LoraConfig
    config = soma_model.peft_config
    layers = adapted_layers(soma_model.model)
    rank_pattern = {re.escape(n): m.r for n, m in layers.items() if m.r != config.r}
    common = dict(r=config.r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                  rank_pattern=rank_pattern, bias='none', fan_in_fan_out=False)
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
        adapter[f'{PEFT_PREFIX}{name}.lora_A.weight'] = layer.lora_A.weight.detach().clone()
        adapter[f'{PEFT_PREFIX}{name}.lora_B.weight'] = layer.lora_B.weight.detach().clone()
    base = {k: v.detach().clone() for k, v in soma_model.model.state_dict().items()
            if ADAPTER_KEYWORD not in k}
    return lora_config, adapter, base


def _save_tensors(tensors: Dict[str, torch.Tensor], path: str) -> None:
    from safetensors.torch import save_file
    fd, tmp = tempfile.mkstemp(prefix='.' + osp.basename(path), dir=osp.dirname(path))
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def save_peft_adapter(soma_model: SoMAModel, directory: str) -> Dict[str, str]:
    """Write the peft adapter folder (config, adapter weights, residual base); return paths."""
    lora_config, adapter, base = export_peft_adapter(soma_model)
    os.makedirs(directory, exist_ok=True)
    paths = {name: osp.join(directory, name)
             for name in (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, RESIDUAL_BASE_NAME)}
    _save_tensors(adapter, paths[ADAPTER_WEIGHTS_NAME])
    _save_tensors(base, paths[RESIDUAL_BASE_NAME])
    with tempfile.TemporaryDirectory(prefix='.adapter_config', dir=directory) as tmp:
        lora_config.save_pretrained(tmp)  # peft's own json writer
        os.replace(osp.join(tmp, ADAPTER_CONFIG_NAME), paths[ADAPTER_CONFIG_NAME])
    return paths
