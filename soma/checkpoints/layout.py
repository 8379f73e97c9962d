"""The checkpoint key layout of this project (SPEC 4), and reading a checkpoint into it.

Keys of a segmentor / detector state dict:

* the backbone: ``backbone.<key>`` (:data:`BACKBONE_PREFIX`), ``<key>`` being the converted
  DINOv2's (``blocks.8.attn.q.weight``) or, for an ``HFVisionBackbone``,
  ``hf_model.<transformers key>``. A SoMA-wrapped backbone holds it one level down,
  ``backbone.model.<key>`` (:data:`SOMA_PREFIX`); a ``peft``-adapted one keeps
  ``backbone.<key>`` (adapted in place);
* adapters: SoMA's ``<layer>.lora_A.weight`` / ``lora_B.weight`` (:data:`SOMA_LORA_A`,
  :data:`SOMA_LORA_B`, the names of :class:`soma.peft.SoMALinear`); peft's
  ``<layer>.lora_A.default.weight`` ... (:data:`PEFT_ADAPTER_KEY`);
* heads: ``decode_head.*`` (segmentors), neck and query/RPN/RoI heads (detectors);
* the EMA copy (mmengine ``EMAHook``, ``checkpoint['ema_state_dict']``): the same keys
  behind ``module.`` (:data:`EMA_PREFIX`).

``checkpoint['meta']`` says which adapter wrote it: ``meta['soma']`` (SoMA: semantics and
adapter config) or ``meta['peft']`` (a peft config); :func:`adapter_method` is the one place
that decides between them. :func:`load_soma_checkpoint_file` is how every operation reads a
file: safely (``soma.utils.checkpoint_io``) and with the release's Co-DETR names renamed.
"""
import copy
import os
import re
from typing import Callable, Dict, Iterable, Optional, Tuple, Union

import torch

from soma.models.adapters.peft_tuner import ADAPTER_NAME, PEFT_META_KEY
from soma.models.adapters.soma_tuner import SoMATuner
from soma.models.backbones.dinov2 import DinoVisionTransformer
from soma.peft.config import (ADAPTER_KEYWORD, META_KEY, SEMANTICS_RELEASE, SEMANTICS_RESIDUAL,
                              TRAINABLE_TOKEN_KEYWORDS)
from soma.peft.layer import LORA_A, LORA_B
from soma.utils.checkpoint_io import (EMA_STATE_DICT, CheckpointError, get_state_dict,
                                      load_checkpoint_file)

from .legacy_codetr import rename_legacy_codetr_checkpoint

__all__ = [
    'CheckpointLike', 'PathLike', 'Device', 'BACKBONE_PREFIX', 'SOMA_PREFIX', 'EMA_PREFIX',
    'HEAD_PREFIX', 'MASK_TOKEN',
    'SOMA_LORA_A', 'SOMA_LORA_B', 'PEFT_ADAPTER_KEY', 'DINOV2_LAYERS_PATTERN', 'SOMA', 'PEFT',
    'EMA_STATE_DICT', 'few', 'file_name', 'strip_ema', 'load_soma_checkpoint_file',
    'checkpoint_meta', 'checkpoint_semantics', 'recorded_lora_cfg', 'peft_meta_of',
    'adapter_method', 'copied_meta', 'check_adapter_keys_fit'
]

# a checkpoint argument: a file path, or a checkpoint dict already read
CheckpointLike = Union[str, os.PathLike, dict]
PathLike = Union[str, os.PathLike]
Device = Union[str, torch.device]

BACKBONE_PREFIX = 'backbone.'  # the model's backbone
SOMA_PREFIX = BACKBONE_PREFIX + SoMATuner.base_prefix  # 'backbone.model.': SoMA's wrapper
EMA_PREFIX = 'module.'  # EMAHook's copy of the model
HEAD_PREFIX = 'decode_head.'
MASK_TOKEN = TRAINABLE_TOKEN_KEYWORDS[0]  # 'mask_token'
SOMA_LORA_A, SOMA_LORA_B = f'.{LORA_A}.weight', f'.{LORA_B}.weight'
# peft's adapter parameters: <layer>.lora_A.default.weight, lora_magnitude_vector, ...
PEFT_ADAPTER_KEY = re.compile(rf'\.{ADAPTER_KEYWORD}_[A-Za-z_]+\.{ADAPTER_NAME}\.')
# the blocks of the release's backbone (DINOv2), for checkpoints that record no adapter config
DINOV2_LAYERS_PATTERN = DinoVisionTransformer.layers_pattern
SOMA, PEFT = META_KEY, PEFT_META_KEY  # the adapter methods, named by their meta keys


def few(keys: Iterable[str], n: int = 3) -> str:
    """The first ``n`` of ``keys`` (sorted), for a one-line message."""
    keys = sorted(keys)
    more = f' and {len(keys) - n} more' if len(keys) > n else ''
    return ', '.join(keys[:n]) + more


def file_name(ckpt: CheckpointLike, default: Optional[str]) -> Optional[str]:
    """``ckpt`` as a path string when it is one, else ``default`` (a dict has no name)."""
    return os.fspath(ckpt) if isinstance(ckpt, (str, os.PathLike)) else default


def strip_ema(key: str) -> str:
    """``key`` without the EMA copy's ``module.`` prefix."""
    return key[len(EMA_PREFIX):] if key.startswith(EMA_PREFIX) else key


def load_soma_checkpoint_file(path_or_ckpt: Union[str, os.PathLike, dict]) -> dict:
    """A checkpoint dict from a path (``.pth``/``.safetensors``) or a dict (passed through).

    The release's Co-DETR key names are replaced by ours here, in ``state_dict`` and
    ``ema_state_dict`` (:mod:`soma.checkpoints.legacy_codetr`, logged), so every loader,
    check and tool sees this project's layout and writes it.
    """
    if not isinstance(path_or_ckpt, dict):
        return rename_legacy_codetr_checkpoint(load_checkpoint_file(path_or_ckpt),
                                               os.fspath(path_or_ckpt))
    return rename_legacy_codetr_checkpoint(path_or_ckpt, 'the checkpoint dict')


def checkpoint_meta(ckpt: CheckpointLike) -> dict:
    """``ckpt['meta']`` of a checkpoint dict ({} for a bare state dict or no meta)."""
    meta = ckpt.get('meta') if isinstance(ckpt, dict) and 'state_dict' in ckpt else None
    return meta if isinstance(meta, dict) else {}


def checkpoint_semantics(ckpt: CheckpointLike) -> str:
    """'release' or 'residual': what the adapted ``weight`` of a SoMA checkpoint holds."""
    semantics = (checkpoint_meta(ckpt).get(SOMA) or {}).get('semantics', SEMANTICS_RELEASE)
    if semantics not in (SEMANTICS_RELEASE, SEMANTICS_RESIDUAL):
        raise CheckpointError(
            f"meta['{SOMA}']['semantics'] is {semantics!r}; expected "
            f"{SEMANTICS_RELEASE!r} or {SEMANTICS_RESIDUAL!r}")
    return semantics


def recorded_lora_cfg(ckpt: CheckpointLike) -> dict:
    """The SoMA adapter config recorded in ``meta['soma']`` ({} when none: a release)."""
    soma_meta = checkpoint_meta(ckpt).get(SOMA) or {}
    return dict(soma_meta.get('lora_cfg') or soma_meta.get('config') or {})


def peft_meta_of(ckpt: CheckpointLike, name: str = 'checkpoint') -> Optional[dict]:
    """``meta['peft']`` of a checkpoint dict, or None for any other checkpoint; a state dict
    with peft's adapter keys but no ``meta['peft']`` is a one-line error."""
    if not isinstance(ckpt, dict):
        return None
    peft_meta = checkpoint_meta(ckpt).get(PEFT)
    if isinstance(peft_meta, dict):
        return peft_meta
    state_dict = get_state_dict(ckpt)
    found = ([k for k in state_dict if PEFT_ADAPTER_KEY.search(k)]
             if isinstance(state_dict, dict) else [])
    if found:
        raise CheckpointError(
            f"{name}: peft adapter keys ({found[0]}) but no meta['{PEFT}'] with the "
            f"adapter config (saved without SoMAMetaHook?); it cannot be rebuilt")
    return None


def adapter_method(ckpt: CheckpointLike, name: str = 'checkpoint') -> str:
    """Which adapter method wrote ``ckpt``: :data:`PEFT` when it records ``meta['peft']``,
    else :data:`SOMA` (SoMA's own checkpoints and the release's). The one decision point."""
    return PEFT if peft_meta_of(ckpt, name) is not None else SOMA


def copied_meta(ckpt: CheckpointLike, adapter_key: str) -> dict:
    """A deep copy of the ``meta`` entries a derived checkpoint keeps: the adapter's
    (``adapter_key``: ``'soma'`` or ``'peft'``) and ``dataset_meta``."""
    meta = checkpoint_meta(ckpt)
    return {k: copy.deepcopy(meta[k]) for k in (adapter_key, 'dataset_meta') if k in meta}


def check_adapter_keys_fit(backbone: Dict[str, torch.Tensor], adapter_sd: dict, prefix: str,
                           adapter_part: Callable[[str], Optional[Tuple[str, Optional[str]]]]
                           ) -> None:
    """One-line errors for the keys of ``adapter_sd`` (state dict or EMA copy) that cannot sit
    on the converted ``backbone`` (plain keys): the shared check of SoMA and peft merges.

    Keys under ``prefix`` (``module.`` EMA keys too) are checked; ``adapter_part(rest)`` of
    the part after the prefix gives ``(layer, 'A' | 'B' | None)`` for an adapter key (the
    layer must have a base weight; an ``A`` factor must match its input width, a ``B`` factor
    its output width) and None for a plain key (same shape as the backbone's, if it has it).
    """
    for key, value in adapter_sd.items():
        plain = strip_ema(key)
        if not plain.startswith(prefix) or not torch.is_tensor(value):
            continue
        rest = plain[len(prefix):]
        part = adapter_part(rest)
        if part is None:
            if rest in backbone and value.shape != backbone[rest].shape:
                raise CheckpointError(
                    f'adapter key {key} has shape {tuple(value.shape)} but the backbone '
                    f'checkpoint has {tuple(backbone[rest].shape)}; backbone and adapter do '
                    f'not match')
            continue
        layer, factor = part
        base = backbone.get(f'{layer}.weight')
        if base is None:
            raise CheckpointError(
                f'adapter key {key} has no base weight {layer}.weight in the backbone '
                f'checkpoint (an adapter for another architecture?)')
        dim = {'A': 1, 'B': 0}.get(factor)
        if dim is not None and (value.ndim != 2 or value.shape[dim] != base.shape[dim]):
            raise CheckpointError(
                f'adapter key {key} has shape {tuple(value.shape)}, which does not fit '
                f'{layer}.weight of shape {tuple(base.shape)} in the backbone checkpoint')
