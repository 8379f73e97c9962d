"""A stand-in for a backbone made of its adapted linears only.

Extract / merge / fold never build the whole segmentor: they rebuild the adapted layers as
plain ``nn.Linear`` modules at their names (:func:`linear_skeleton`), put the method's
adapter on them (SoMA's ``SoMAModel`` or peft's tuner, on the same names and config as in
training) and let the method compute what it computes in the model.
"""
from typing import Dict, Iterable, Optional, Tuple, Union

import torch
from torch import nn

__all__ = ['linear_skeleton', 'float32_weights']


def linear_skeleton(weights: Dict[str, Tuple[torch.Tensor, Optional[torch.Tensor]]]
                    ) -> nn.Module:
    """An ``nn.Module`` tree with one float32 ``nn.Linear`` per ``name -> (weight, bias)``,
    at that (dotted) name, holding those values."""
    root = nn.Module()
    for name, (weight, bias) in weights.items():
        parent = root
        *path, leaf = name.split('.')
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                          device=weight.device, dtype=torch.float32)
        with torch.no_grad():
            layer.weight.copy_(weight)
            if bias is not None:
                layer.bias.copy_(bias)
        parent.add_module(leaf, layer)
    return root


def float32_weights(state_dict: Dict[str, torch.Tensor], layers: Iterable[str],
                    device: Union[str, torch.device] = 'cpu'
                    ) -> Dict[str, Tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """``{layer: (weight, bias or None)}`` of ``layers`` from a plain state dict, float32 on
    ``device`` (what :func:`linear_skeleton` takes)."""
    out = {}
    for name in layers:
        bias = state_dict.get(f'{name}.bias')
        out[name] = (state_dict[f'{name}.weight'].to(device, torch.float32),
                     None if bias is None else bias.to(device, torch.float32))
    return out
