"""SoMA adapters as a standard ``peft`` LoRA folder over the public converted weights.

The trained delta of a checkpoint, expressed as peft does for PiSSA: for this project's
'residual' semantics ``W_res + s*B@A = W_pre + s*[B | -B0] @ [A ; A0]`` (rank 2r, the SoMA
initialisation ``B0, A0`` recomputed once from the converted backbone at export); for the
release's semantics simply ``s*B@A`` (rank r). ``PeftModel.from_pretrained(<plain DINOv2
with the converted weights>, folder)`` computes what the SoMA model computes, and
:func:`merge_soma_weights_with_peft` rebuilds the full checkpoint from the folder with no
SVD. The SoMA merge itself is :mod:`soma.checkpoints.soma_adapter`'s.
"""
import os
from typing import Dict, Optional, Tuple

import torch

from soma.peft.config import SEMANTICS_RESIDUAL
from soma.peft.interop import load_peft_adapter_weights, save_peft_delta
from soma.peft.layer import LORA_A, LORA_B
from soma.peft.model import SoMAModel
from soma.utils.checkpoint_io import (EMA_STATE_DICT, CheckpointError, get_state_dict,
                                      save_checkpoint_file)

from .backbone import read_converted_backbone
from .fingerprint import check_backbone_fingerprint
from .layout import (EMA_PREFIX, SOMA, SOMA_LORA_A, SOMA_LORA_B, SOMA_PREFIX, CheckpointLike,
                     Device, PathLike, checkpoint_semantics, load_soma_checkpoint_file)
from .skeleton import float32_weights
from .soma_adapter import (adapter_ranks, check_adapter_fits, check_layer_sets, merge_soma,
                           output_meta, require_adapters, skeleton_soma_model, soma_config_of)

__all__ = ['soma_delta_model', 'extract_peft_dir', 'merge_soma_weights_with_peft',
           'merge_peft_file']


def soma_delta_model(ckpt: CheckpointLike, backbone_ckpt: CheckpointLike, device: Device = 'cpu',
                     semantics: Optional[str] = None, check_fingerprint: bool = True
                     ) -> Tuple[SoMAModel, Optional[Dict[str, Tuple[torch.Tensor, torch.Tensor]]]]:
    """A checkpoint's trained adapters on the converted backbone, ready for a peft export.

    Returns ``(soma_model, initial)``: a ``SoMAModel`` around the adapted layers of the
    converted backbone (a skeleton of ``nn.Linear``), holding the checkpoint's ``lora_A``,
    ``lora_B`` and target biases. For 'residual' semantics ``initial`` is ``{layer: (B0,
    A0)}``, the SoMA initialisation of W_pretrained, recomputed here once with
    ``soma.peft`` on ``device`` (the training device gives the training's values), and the
    model's weights are W_res; for 'release' it is ``None`` and they are W_pretrained.
    ``semantics`` overrides the recorded one. Feed both to
    :func:`soma.peft.interop.save_peft_delta`. The EMA copy is not used. The backbone must be
    the one the checkpoint was trained on (:mod:`.fingerprint`; ``check_fingerprint``).
    """
    source = ckpt
    ckpt = load_soma_checkpoint_file(ckpt)
    state_dict = get_state_dict(ckpt)
    require_adapters(state_dict, 'checkpoint')
    backbone = read_converted_backbone(backbone_ckpt)
    check_adapter_fits(backbone, state_dict)
    check_backbone_fingerprint(ckpt, backbone, backbone_ckpt, source, check_fingerprint)
    semantics = semantics or checkpoint_semantics(ckpt)
    layers = adapter_ranks({k: v for k, v in state_dict.items()
                            if not k.startswith(EMA_PREFIX)})
    config = soma_config_of(output_meta(ckpt).get(SOMA) or {}, layers)
    model = skeleton_soma_model(float32_weights(backbone, layers, device), config,
                                init=semantics == SEMANTICS_RESIDUAL)
    adapted = model.adapted_layers()
    check_layer_sets(adapted, layers, 'checkpoint')
    initial = None
    if semantics == SEMANTICS_RESIDUAL:
        initial = {n: (m.lora_B.weight.detach().cpu().clone(),
                       m.lora_A.weight.detach().cpu().clone()) for n, m in adapted.items()}
    with torch.no_grad():
        for name, layer in adapted.items():
            key = SOMA_PREFIX + name
            layer.lora_A.weight.copy_(state_dict[key + SOMA_LORA_A])
            layer.lora_B.weight.copy_(state_dict[key + SOMA_LORA_B])
            if layer.bias is not None and f'{key}.bias' in state_dict:
                layer.bias.copy_(state_dict[f'{key}.bias'])
            layer.lora_initialized = True
    return model.to('cpu'), initial


def extract_peft_dir(ckpt: CheckpointLike, backbone_ckpt: CheckpointLike, directory: PathLike,
                     device: Device = 'cpu', semantics: Optional[str] = None,
                     check_fingerprint: bool = True) -> Dict[str, str]:
    """Write a checkpoint's adapters as a peft LoRA folder over the converted backbone.

    ``PeftModel.from_pretrained(<plain DINOv2 with the converted weights>, directory)`` then
    computes what the SoMA model computes (:func:`soma_delta_model`,
    :func:`soma.peft.interop.save_peft_delta`). Returns ``{file name: path}``.
    """
    model, initial = soma_delta_model(ckpt, backbone_ckpt, device, semantics, check_fingerprint)
    return save_peft_delta(model, os.fspath(directory), initial)


def _residual_weights_from_peft(backbone: dict, adapter: dict, peft_layers: dict, config,
                                device='cpu') -> Dict[str, torch.Tensor]:
    """``{layer.weight: W_res}``: ``W_pre - s*B0@A0`` with ``B0, A0`` from the rank-2r peft
    adapter of :func:`extract_peft_dir` (its second halves); no SVD."""
    out = {}
    for name, rank in adapter_ranks(adapter).items():
        key = SOMA_PREFIX + name
        if f'{key}.weight' in adapter:
            continue
        peft = peft_layers.get(name)
        if peft is None or LORA_A not in peft or LORA_B not in peft:
            raise CheckpointError(f'peft adapter: no {LORA_A}/{LORA_B} for {name}')
        lora_a, lora_b = peft[LORA_A], peft[LORA_B]
        if lora_a.shape[0] != 2 * rank or lora_b.shape[1] != 2 * rank:
            raise CheckpointError(
                f'peft adapter: {name}.lora_A has rank {lora_a.shape[0]}, expected 2 x {rank} '
                f"for a 'residual' adapter (write it with extract_soma_weights.py --peft-dir)")
        if not (torch.equal(lora_a[:rank], adapter[key + SOMA_LORA_A])
                and torch.equal(lora_b[:, :rank], adapter[key + SOMA_LORA_B])):
            raise CheckpointError(f'peft adapter: {name} differs from {key}{SOMA_LORA_A} of the '
                                  f'adapter checkpoint; they come from different models')
        a0 = lora_a[rank:].to(device, torch.float32).contiguous()
        b0 = (-lora_b[:, rank:]).to(device, torch.float32).contiguous()
        weight = backbone[f'{name}.weight'].to(device, torch.float32)
        # the same op as SoMALinear.init_adapter: W_res = W - s*B0@A0
        out[f'{key}.weight'] = weight.addmm(b0, a0, alpha=-(config.lora_alpha / rank)).cpu()
    return out


def merge_soma_weights_with_peft(backbone_ckpt: CheckpointLike, adapter_ckpt: CheckpointLike,
                                 peft_dir: PathLike, device: Device = 'cpu',
                                 check_fingerprint: bool = True) -> dict:
    """:func:`soma.checkpoints.merge_soma_weights` without its SVD: W_res comes from the peft
    folder.

    For a 'residual' adapter the SoMA initialisation ``B0, A0`` is read from the folder
    written by :func:`extract_peft_dir` (rank 2r: ``[B | -B0]``, ``[A ; A0]``; its first
    halves must equal the adapter's), so ``W_res = W_pre - s*B0@A0`` is one matmul. A
    'release' adapter needs no rebuild (the folder is only checked to exist).
    """
    peft_layers = load_peft_adapter_weights(peft_dir)
    source = adapter_ckpt
    adapter_ckpt = load_soma_checkpoint_file(adapter_ckpt)
    backbone = read_converted_backbone(backbone_ckpt)
    if checkpoint_semantics(adapter_ckpt) != SEMANTICS_RESIDUAL:
        merged = merge_soma(backbone, adapter_ckpt, device=device)
    else:
        adapter = get_state_dict(adapter_ckpt)
        require_adapters(adapter, 'adapter checkpoint')
        check_adapter_fits(backbone, adapter)
        config = soma_config_of(output_meta(adapter_ckpt).get(SOMA) or {},
                                adapter_ranks(adapter))
        residual = _residual_weights_from_peft(backbone, adapter, peft_layers, config, device)
        completed = dict(adapter_ckpt, state_dict=dict(adapter, **residual))
        ema = adapter_ckpt.get(EMA_STATE_DICT)
        if isinstance(ema, dict):
            completed[EMA_STATE_DICT] = dict(ema, **{EMA_PREFIX + k: v
                                                     for k, v in residual.items()})
        merged = merge_soma(backbone, completed, device=device)
    check_backbone_fingerprint(adapter_ckpt, backbone, backbone_ckpt, source, check_fingerprint)
    return merged


def merge_peft_file(backbone_ckpt: CheckpointLike, soma_ckpt: CheckpointLike, peft_dir: PathLike,
                    merged_ckpt: PathLike, device: Device = 'cpu',
                    check_fingerprint: bool = True) -> str:
    """:func:`merge_soma_weights_with_peft` from files, saved atomically; the output path."""
    save_checkpoint_file(merge_soma_weights_with_peft(backbone_ckpt, soma_ckpt, peft_dir, device,
                                                      check_fingerprint), merged_ckpt)
    return os.fspath(merged_ckpt)
