"""The checkpoint operations, one public function each, whatever adapter wrote the file.

Every function here reads its inputs once (:func:`~.layout.load_soma_checkpoint_file`,
:func:`~.backbone.read_converted_backbone`), decides once which method's module does the
work (:func:`~.layout.adapter_method`: ``meta['peft']`` -> :mod:`~.peft_adapter`, else
:mod:`~.soma_adapter`) and hands the dicts to it. The tools, ``init_model``,
``tools/test.py`` and the hooks call these.
"""
import os
from typing import List, Optional, Sequence, Tuple

from mmengine.config import Config
from torch import nn

from soma.models.adapters.base import BackboneAdapter
from soma.peft.config import ADAPTER_KEYWORD
from soma.utils.checkpoint_io import (EMA_STATE_DICT, CheckpointError, get_state_dict,
                                      save_checkpoint_file)
from soma.utils.cli import inputs_named

from .backbone import (backbone_part, backbone_target, fitting_weights, plain_keys,
                       read_converted_backbone)
from .fingerprint import check_backbone_fingerprint, record_fingerprint
from .layout import (BACKBONE_PREFIX, EMA_PREFIX, PEFT, CheckpointLike, Device, PathLike,
                     adapter_method, file_name, load_soma_checkpoint_file, strip_ema)
from .model_check import check_checkpoint_for_model
from .peft_adapter import extract_peft, fold_peft, merge_peft
from .soma_adapter import extract_soma, extract_soma_dgod, fold_soma, merge_soma

__all__ = ['extract_soma_weights', 'extract_soma_dgod_weights', 'merge_soma_weights',
           'fold_adapters', 'generate_full_weights', 'extract_file', 'merge_file',
           'prepare_checkpoint', 'load_soma_checkpoint', 'adapter_contents',
           'complete_checkpoint']


def _peft_method(ckpt: dict, name: str, semantics: Optional[str] = None) -> bool:
    """Whether ``ckpt`` is a peft model's; ``semantics`` applies to SoMA checkpoints only."""
    if adapter_method(ckpt, name) != PEFT:
        return False
    if semantics is not None:
        raise ValueError(f'{name}: a peft model checkpoint; semantics={semantics!r} applies to '
                         f'SoMA checkpoints only (its meta records the base weights)')
    return True


# --------------------------------------------------------------------------- extract / merge / fold
def extract_soma_weights(full_ckpt: CheckpointLike, target_modules: Optional[Sequence[str]] = None,
                         semantics: Optional[str] = None) -> dict:
    """Adapter + head checkpoint of a trained segmentor: SoMA's released layout
    (:func:`.soma_adapter.extract_soma`; ``target_modules`` / ``semantics`` override the recorded
    ones) or a peft model's (:func:`.peft_adapter.extract_peft`)."""
    full_ckpt = load_soma_checkpoint_file(full_ckpt)
    if _peft_method(full_ckpt, 'final checkpoint', semantics):
        out = extract_peft(full_ckpt)
    else:
        out = extract_soma(full_ckpt, target_modules, semantics)
    return record_fingerprint(out, backbone_part(get_state_dict(full_ckpt)))


def extract_soma_dgod_weights(full_ckpt: CheckpointLike,
                              target_modules: Optional[Sequence[str]] = None,
                              semantics: Optional[str] = None) -> dict:
    """Adapter + neck + heads checkpoint of a trained detector (no EMA copy)."""
    full_ckpt = load_soma_checkpoint_file(full_ckpt)
    if _peft_method(full_ckpt, 'final checkpoint', semantics):
        out = extract_peft(full_ckpt, keep_ema=False)
    else:
        out = extract_soma_dgod(full_ckpt, target_modules, semantics)
    return record_fingerprint(out, backbone_part(get_state_dict(full_ckpt)))


def merge_soma_weights(backbone_ckpt: CheckpointLike, adapter_ckpt: CheckpointLike,
                       device: Device = 'cpu', check_fingerprint: bool = True) -> dict:
    """Full checkpoint = converted backbone + adapter/head checkpoint, the adapted weights
    rebuilt as the adapter's semantics ask (SoMA 'residual': W_res by the SVD init on
    ``device``; peft pissa/olora: peft's residual). A backbone other than the one the adapter
    was trained on is refused (:mod:`.fingerprint`) unless ``check_fingerprint=False``."""
    backbone = read_converted_backbone(backbone_ckpt)
    adapter = load_soma_checkpoint_file(adapter_ckpt)
    with inputs_named(backbone=backbone_ckpt, adapter=adapter_ckpt):  # they may not fit
        return _merge(backbone, backbone_ckpt, adapter, adapter_ckpt, device, check_fingerprint)


def _merge(backbone: dict, backbone_source: CheckpointLike, adapter_ckpt: dict,
           adapter_source: CheckpointLike, device: Device, check_fingerprint: bool) -> dict:
    """The merge of the method that wrote ``adapter_ckpt`` (both already read; the sources
    name them in errors), then the backbone's fingerprint check (after the merge's own checks
    of shapes, keys and meta)."""
    if _peft_method(adapter_ckpt, 'adapter checkpoint'):
        merged = merge_peft(backbone, adapter_ckpt, device=device)
    else:
        merged = merge_soma(backbone, adapter_ckpt, device=device)
    check_backbone_fingerprint(adapter_ckpt, backbone, backbone_source, adapter_source,
                               check_fingerprint)
    return merged


def fold_adapters(full_ckpt: CheckpointLike) -> dict:
    """Fold the adapters of a full checkpoint into plain weights and drop them (and the EMA
    copy): a plain backbone + head checkpoint for the config without ``lora_cfg`` /
    ``peft_cfg``."""
    full_ckpt = load_soma_checkpoint_file(full_ckpt)
    if _peft_method(full_ckpt, 'full checkpoint'):
        return fold_peft(full_ckpt)
    return fold_soma(full_ckpt)


def generate_full_weights(backbone_ckpt: CheckpointLike, soma_ckpt: CheckpointLike,
                          merge_adapters: bool = False, device: Device = 'cpu',
                          check_fingerprint: bool = True) -> dict:
    """A full checkpoint for evaluation from a converted backbone and an adapter checkpoint:
    :func:`merge_soma_weights`, folded by :func:`fold_adapters` with ``merge_adapters``."""
    full = merge_soma_weights(backbone_ckpt, soma_ckpt, device=device,
                              check_fingerprint=check_fingerprint)
    return fold_adapters(full) if merge_adapters else full


def extract_file(final_ckpt: CheckpointLike, soma_ckpt: PathLike,
                 target_modules: Optional[Sequence[str]] = None, dgod: bool = False,
                 semantics: Optional[str] = None) -> str:
    """Extract from a file (or dict) and save (``.pth`` or ``.safetensors``, atomically)."""
    fn = extract_soma_dgod_weights if dgod else extract_soma_weights
    save_checkpoint_file(fn(final_ckpt, target_modules, semantics=semantics), soma_ckpt)
    return os.fspath(soma_ckpt)


def merge_file(backbone_ckpt: CheckpointLike, soma_ckpt: CheckpointLike, merged_ckpt: PathLike,
               merge_adapters: bool = False, device: Device = 'cpu',
               check_fingerprint: bool = True) -> str:
    """Merge files and save the full checkpoint (atomically); the output path."""
    save_checkpoint_file(generate_full_weights(backbone_ckpt, soma_ckpt, merge_adapters,
                                               device, check_fingerprint), merged_ckpt)
    return os.fspath(merged_ckpt)


# --------------------------------------------------------------------------- loading
def prepare_checkpoint(checkpoint: CheckpointLike, backbone: Optional[CheckpointLike] = None,
                       device: Device = 'cpu', check_fingerprint: bool = True) -> dict:
    """The checkpoint dict to load: the file itself, or merged with ``backbone`` when given
    (the backbone it was trained on: checked by fingerprint unless ``check_fingerprint``
    is False)."""
    ckpt = load_soma_checkpoint_file(checkpoint)
    if backbone is not None:
        if not any(ADAPTER_KEYWORD in k for k in get_state_dict(ckpt)):
            raise CheckpointError(
                f'{file_name(checkpoint, "checkpoint")}: --backbone given but the checkpoint '
                f'has no adapter keys to merge with it')
        ckpt = _merge(read_converted_backbone(backbone), backbone, ckpt, checkpoint, device,
                      check_fingerprint)
    return ckpt


def load_soma_checkpoint(model: nn.Module, checkpoint: CheckpointLike,
                         backbone: Optional[CheckpointLike] = None, cfg: Optional[Config] = None,
                         config_path: Optional[PathLike] = None, use_ema: bool = False,
                         strict: bool = True, device: Device = 'cpu',
                         check_fingerprint: bool = True) -> dict:
    """Check, then load a (possibly adapter-only) checkpoint into ``model``; returns the dict.

    ``backbone``: a converted backbone merged in first (:func:`merge_soma_weights`).
    ``use_ema``: load the ``ema_state_dict`` copy (its ``module.`` prefix and ``steps`` removed).
    """
    ckpt = prepare_checkpoint(checkpoint, backbone, device=device,
                              check_fingerprint=check_fingerprint)
    if use_ema:
        ema = ckpt.get(EMA_STATE_DICT)
        if not isinstance(ema, dict):
            raise CheckpointError(
                f'{file_name(checkpoint, "checkpoint")}: no {EMA_STATE_DICT} to load')
        state_dict = {k[len(EMA_PREFIX):]: v for k, v in ema.items() if k.startswith(EMA_PREFIX)}
    else:
        state_dict = get_state_dict(ckpt)
    check_checkpoint_for_model(model, state_dict, cfg, checkpoint_path=file_name(checkpoint, None),
                               config_path=config_path, strict=strict)
    model.load_state_dict(state_dict, strict=strict)
    return ckpt


# --------------------------------------------------------------------------- loading by a runner
def adapter_contents(ckpt: dict, adapter: BackboneAdapter) -> Tuple[bool, bool]:
    """``(has adapters, has weights)`` of a checkpoint about to be loaded into a model with
    ``adapter``: whether the state dict holds keys of its adapters, and whether it holds the
    adapted layers' own weights too (a full checkpoint, whose meta then says what they are).
    ``module.`` prefixes (a wrapped model's save) are read as mmengine's loading does."""
    keys = {strip_ema(k) for k in get_state_dict(ckpt)}
    carried = [k for k in adapter.adapter_keys() if BACKBONE_PREFIX + k in keys]
    layers = [n for n in adapter.adapted_layers()
              if any(k.startswith(f'{adapter.base_prefix}{n}.') for k in carried)]
    return bool(carried), any(f'{BACKBONE_PREFIX}{adapter.base_prefix}{n}.weight' in keys
                              for n in layers)


def complete_checkpoint(model: nn.Module, checkpoint: dict, source: CheckpointLike,
                        strict: bool = True, check_fingerprint: bool = True) -> List[str]:
    """Complete ``checkpoint`` (a dict about to be loaded into ``model``) in place with the
    converted backbone ``source``; return the added state-dict keys.

    The backbone keys ``checkpoint['state_dict']`` lacks are added under the model's backbone
    prefix, and under ``module.`` in ``ema_state_dict`` when there is one (the keys it holds
    are kept). When the checkpoint holds the model's adapter keys, the values are those of
    :func:`merge_soma_weights` on the same files (the adapter's semantics honoured: W_res for
    a SoMA 'residual' adapter, peft's residual for pissa/olora), on the model's device.
    """
    target, prefix, adapter = backbone_target(model)
    state_dict = checkpoint['state_dict'] if 'state_dict' in checkpoint else checkpoint
    ema = checkpoint.get(EMA_STATE_DICT) if 'state_dict' in checkpoint else None
    ema = ema if isinstance(ema, dict) else None
    wanted = [prefix + k for k in plain_keys(target, adapter)]
    if all(k in state_dict for k in wanted) and (
            ema is None or all(EMA_PREFIX + k in ema for k in wanted)):
        return []  # a full checkpoint (e.g. resume): nothing to add
    converted = read_converted_backbone(source)
    full = {prefix + k: v for k, v in fitting_weights(target, adapter, converted, source,
                                                      strict).items()}
    full_ema = {EMA_PREFIX + k: v for k, v in full.items()}
    if adapter is not None and any(BACKBONE_PREFIX + k in state_dict
                                   for k in adapter.adapter_keys()):
        merged = _merge(converted, source, checkpoint, 'the loaded checkpoint',
                        next(target.parameters()).device, check_fingerprint)
        full = {k: v for k, v in merged['state_dict'].items() if k in full}
        full_ema = {k: v for k, v in merged.get(EMA_STATE_DICT, full_ema).items()
                    if k in full_ema}
    added = [k for k in full if k not in state_dict]
    for key in added:
        state_dict[key] = full[key]
    if ema is not None:
        for key, value in full_ema.items():
            ema.setdefault(key, value)
    return added
