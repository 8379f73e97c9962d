"""Extract / merge / fold the checkpoints of models adapted by ``peft`` (``peft_cfg``).

The layout (:mod:`soma.models.adapters.peft_tuner`): keys ``backbone.<backbone key>``; an adapted
layer keeps its base weight under its own name (``backbone.blocks.8.attn.q.weight``), its
adapters are peft's (``...q.lora_A.default.weight``, ``...lora_B.default.weight``, DoRA
``...lora_magnitude_vector.default.weight``); ``meta['peft']`` is the adapter's
``checkpoint_meta()`` (written by ``SoMAMetaHook``): the resolved peft config, the first
adapted block, the base-weight semantics and the trained keys.

* extract: every adapter key (MiCA's frozen ``lora_B`` too), the trained backbone keys of
  ``meta['peft']['trainable']`` (the biases of peft's ``bias`` mode: none for
  ``bias='none'``), every key outside the backbone (heads, neck); the same of the EMA copy.
* base weights: with ``pissa``/``olora`` (``base_weight == 'residual'``) an adapted layer
  stores ``W - s*B0@A0``. The adapter checkpoint does not carry it: the merge recomputes it
  from the converted backbone with peft's own init (``pissa_init``/``olora_init``: an exact
  SVD / QR, deterministic), as SoMA's 'residual' merge re-runs SoMA's SVD; bit for bit when
  it runs on the same kind of device as in training. ``pissa_niter_<N>`` (a randomised SVD)
  cannot be recomputed: its adapter checkpoint keeps the adapted layers' base weights.
* fold: peft's ``merge_and_unload`` on the adapted layers: a plain backbone checkpoint
  (``backbone.<key>`` + heads) for a config without ``peft_cfg``.

A sibling of :mod:`soma.checkpoints.soma_adapter` (same operations, same arguments); the
public operations of :mod:`soma.checkpoints` read the files and choose between them.
"""
from typing import Dict, List

import torch

from soma.models.adapters.peft_tuner import (BASE_RESIDUAL, PeftTuner, apply_peft_adapter,
                                             weight_init_kind)
from soma.utils.checkpoint_io import EMA_STATE_DICT, CheckpointError, get_state_dict

from .layout import (BACKBONE_PREFIX, EMA_PREFIX, PEFT, Device, check_adapter_keys_fit, copied_meta,
                     peft_meta_of)
from .skeleton import linear_skeleton

__all__ = ['extract_peft', 'merge_peft', 'fold_peft']

PREFIX = BACKBONE_PREFIX  # peft adapts the backbone in place: its keys stay backbone.<key>


def _adapter_layer(rest: str, prefix: str):
    """The layer name of a backbone-relative adapter key (``blocks.8.attn.q``), else None."""
    parts = rest.split('.')
    for i, part in enumerate(parts):
        if part.startswith(prefix):
            return '.'.join(parts[:i]) if i else None
    return None


def _adapter_layers(state_dict, prefix):
    """``{layer name: [its adapter keys, backbone-relative]}`` of a (non-EMA) state dict."""
    layers = {}
    for key in state_dict:
        if key.startswith(PREFIX):
            layer = _adapter_layer(key[len(PREFIX):], prefix)
            if layer is not None:
                layers.setdefault(layer, []).append(key[len(PREFIX):])
    return layers


def _prefix(meta):
    return meta.get('adapter_prefix') or 'lora_'


def _require_peft_adapters(state_dict: dict, meta: dict, name: str) -> Dict[str, List[str]]:
    if not isinstance(state_dict, dict) or not state_dict:
        raise CheckpointError(f'{name}: empty checkpoint, no state dict found')
    layers = _adapter_layers(state_dict, _prefix(meta))
    if not layers:
        raise CheckpointError(
            f"{name}: meta['{PEFT}'] but no adapter keys "
            f"('{PREFIX}...{_prefix(meta)}...'; first keys: {sorted(state_dict)[:3]})")
    return layers


def _output_meta(ckpt: dict, **extra) -> dict:
    out = copied_meta(ckpt, PEFT)
    out[PEFT].update(extra)
    return out


# --------------------------------------------------------------------------- extract
def extract_peft(full_ckpt: dict, keep_ema: bool = True) -> dict:
    """Adapter + heads checkpoint of a trained peft model (see the module docstring).

    ``keep_ema=False`` drops the EMA copy (the detector extract, as for SoMA's).
    """
    meta = peft_meta_of(full_ckpt, 'final checkpoint')
    if meta is None:
        raise CheckpointError(f"final checkpoint: no meta['{PEFT}']; not a peft model")
    state_dict = get_state_dict(full_ckpt)
    prefix = _prefix(meta)
    layers = _require_peft_adapters(state_dict, meta, 'final checkpoint')
    trained = set(meta.get('trainable') or ())
    if meta.get('init') == 'pissa_niter':  # randomised: the residual cannot be recomputed
        trained |= {f'{n}.weight' for n in layers}

    def keep(key):
        if not key.startswith(PREFIX):
            return True  # heads, neck
        rest = key[len(PREFIX):]
        return rest in trained or _adapter_layer(rest, prefix) is not None

    out = {'state_dict': {k: v for k, v in state_dict.items() if keep(k)}}
    ema = full_ckpt.get(EMA_STATE_DICT) if keep_ema else None
    if isinstance(ema, dict):
        out[EMA_STATE_DICT] = {k: v for k, v in ema.items()
                               if k.startswith(EMA_PREFIX) and keep(k[len(EMA_PREFIX):])}
    out['meta'] = _output_meta(full_ckpt)
    return out


# --------------------------------------------------------------------------- merge
def _check_fits(backbone: Dict[str, torch.Tensor], adapter_sd: dict, prefix: str) -> None:
    """One-line errors for adapter keys that cannot sit on the converted backbone."""

    def adapter_part(rest):
        layer = _adapter_layer(rest, prefix)
        if layer is None:
            return None
        part = rest[len(layer) + 1:].split('.')[0]
        return layer, {f'{prefix}A': 'A', f'{prefix}B': 'B'}.get(part)

    check_adapter_keys_fit(backbone, adapter_sd, PREFIX, adapter_part)


def _peft_skeleton(weights: dict, peft_cfg: dict, device='cpu'):
    """``(skeleton, adapter)``: one ``nn.Linear`` per ``name -> (weight, bias)``, adapted by
    peft with ``peft_cfg`` (:func:`soma.models.adapters.peft_tuner.apply_peft_adapter`)."""
    skeleton = linear_skeleton({n: (w.to(device, torch.float32),
                                    None if b is None else b.to(device, torch.float32))
                                for n, (w, b) in weights.items()})
    adapter: PeftTuner = apply_peft_adapter(skeleton, dict(peft_cfg))
    adapted = set(adapter.adapted_layers())
    if adapted != set(weights):
        extra, lacking = sorted(adapted - set(weights)), sorted(set(weights) - adapted)
        raise CheckpointError(
            f"the recorded peft config does not adapt the layers that hold adapter keys "
            f"(config only: {extra[:3] or '-'}; checkpoint only: {lacking[:3] or '-'})")
    return skeleton, adapter


def _layer_weights(state_dict: dict, layers, where: str) -> dict:
    weights = {}
    for name in layers:
        weight = state_dict.get(f'{name}.weight')
        if weight is None:
            raise CheckpointError(f'{where}: {PREFIX}{name}.weight is missing; merge the '
                                  f'adapter with a backbone first')
        weights[name] = (weight, state_dict.get(f'{name}.bias'))
    return weights


def _residual_base_weights(backbone: dict, layers, meta: dict, device='cpu') -> dict:
    """``{layer.weight: W - s*B0@A0}``: peft's own init re-run on the converted weights."""
    if not layers:
        return {}
    _, adapter = _peft_skeleton(_layer_weights(backbone, layers, 'backbone checkpoint'),
                                meta['peft_cfg'], device)
    adapter.init_after_weights()
    return {f'{n}.weight': m.get_base_layer().weight.detach().to('cpu').clone()
            for n, m in adapter.adapted_layers().items()}


def merge_peft(backbone: Dict[str, torch.Tensor], adapter_ckpt: dict, device: Device = 'cpu'
               ) -> dict:
    """Full checkpoint = converted backbone (plain keys) + peft adapter/head checkpoint.

    The backbone's keys get ``backbone.`` (and ``module.backbone.`` in the EMA copy, made only
    when the adapter has one); the adapter's keys overwrite them. With
    ``base_weight == 'residual'`` (pissa, olora) the adapted layers' base weights become
    peft's residual, recomputed from the converted backbone on ``device`` (layers whose weight
    the adapter carries, e.g. ``pissa_niter_<N>``, are not recomputed).
    """
    meta = peft_meta_of(adapter_ckpt, 'adapter checkpoint')
    adapter = get_state_dict(adapter_ckpt)
    layers = _require_peft_adapters(adapter, meta, 'adapter checkpoint')
    ema = adapter_ckpt.get(EMA_STATE_DICT)
    for state in (adapter, ema) if isinstance(ema, dict) else (adapter,):
        _check_fits(backbone, state, _prefix(meta))
    base = dict(backbone)
    if meta.get('base_weight') == BASE_RESIDUAL:
        pending = [n for n in layers if f'{PREFIX}{n}.weight' not in adapter]
        base.update(_residual_base_weights(backbone, pending, meta, device))
    out = {'state_dict': dict({PREFIX + k: v for k, v in base.items()}, **adapter)}
    if isinstance(ema, dict):
        out[EMA_STATE_DICT] = dict({EMA_PREFIX + PREFIX + k: v for k, v in base.items()},
                                   **ema)
    out['meta'] = _output_meta(adapter_ckpt)
    return out


# --------------------------------------------------------------------------- fold
def fold_peft(full_ckpt: dict) -> dict:
    """Fold the adapters of a full peft checkpoint into plain weights (peft's
    ``merge_and_unload``); drop the adapter keys and the EMA copy.

    The result has the plain backbone's keys (``backbone.<key>``) and the heads; it loads into
    the same config with ``peft_cfg=None``. ``meta['peft']['folded'] = True``.
    """
    meta = peft_meta_of(full_ckpt, 'full checkpoint')
    state_dict = get_state_dict(full_ckpt)
    prefix = _prefix(meta)
    layers = _require_peft_adapters(state_dict, meta, 'full checkpoint')
    inner = {k[len(PREFIX):]: v for k, v in state_dict.items() if k.startswith(PREFIX)}
    peft_cfg = dict(meta['peft_cfg'])
    if weight_init_kind(peft_cfg.get('init_lora_weights')):  # values come from the file
        peft_cfg['init_lora_weights'] = True
    skeleton, adapter = _peft_skeleton(_layer_weights(inner, layers, 'full checkpoint'),
                                       peft_cfg)
    wanted = list(skeleton.state_dict())
    lacking = [k for k in wanted if k not in inner]
    if lacking:
        raise CheckpointError(f'full checkpoint: {PREFIX}{lacking[0]} is missing '
                              f'({len(lacking)} keys of the adapted layers)')
    skeleton.load_state_dict({k: inner[k] for k in wanted}, strict=True)
    plain = adapter.merge_and_unload().state_dict()
    out_sd = {}
    for key, value in state_dict.items():
        rest = key[len(PREFIX):] if key.startswith(PREFIX) else None
        if rest is None:
            out_sd[key] = value
        elif _adapter_layer(rest, prefix) is None:
            out_sd[key] = plain[rest].to(value.dtype) if rest in plain else value
    return {'state_dict': out_sd, 'meta': _output_meta(full_ckpt, folded=True)}
