"""Checkpoints of SoMA-adapted models: extract the adapters, merge them with a converted
backbone, fold them into plain weights.

Adapter checkpoints (the released layout) keep ``backbone.model.mask_token``, every key
containing ``lora``, the biases of the target layers in the adapted blocks and every head
key (``decode_head.*``; a detector: every key without ``backbone``). The target layers and
blocks follow the recorded adapter config (``meta['soma']['lora_cfg']``: ``target_modules``,
``layers_pattern``; DINOv2's ``q k v proj fc1 fc2`` in ``blocks.<i>.`` without one).

Two semantics of the adapted weight (SPEC 3, "Defect"), recorded in ``meta['soma']``:

* ``'release'`` (a released checkpoint: no ``meta['soma']``, or semantics 'release'):
  ``weight = W_pretrained``, the layer adds ``s * B @ A``;
* ``'residual'`` (this project): ``weight = W_res = W_pretrained - s * B0 @ A0`` with ``B0, A0``
  the SVD initialisation. :func:`merge_soma` rebuilds ``W_res`` from the converted backbone by
  re-running the same deterministic SoMA initialisation (``soma.peft``) with the adapter
  config stored in the meta, so that extract-then-merge reproduces the model exactly (bit
  for bit when the initialisation runs on the same kind of device as in training).

The functions here take checkpoint dicts already read
(:func:`soma.checkpoints.layout.load_soma_checkpoint_file`) and a converted backbone's plain
keys (:func:`soma.checkpoints.backbone.read_converted_backbone`); the public operations of
:mod:`soma.checkpoints` read the files and choose between this module and its sibling
:mod:`soma.checkpoints.peft_adapter`.
"""
from typing import Dict, Optional, Sequence, Set

import torch
from torch import nn

from soma.peft.config import (ADAPTER_KEYWORD, DEFAULT_TARGET_MODULES, RANK_RAMP_STARTS,
                              SEMANTICS_RELEASE, SEMANTICS_RESIDUAL, TRAINABLE_TOKEN_KEYWORDS,
                              SoMAConfig)
from soma.peft.model import SoMAModel, block_index, is_target_name
from soma.utils.checkpoint_io import EMA_STATE_DICT, CheckpointError, get_state_dict

from .layout import (BACKBONE_PREFIX, DINOV2_LAYERS_PATTERN, Device, EMA_PREFIX, HEAD_PREFIX, SOMA,
                     SOMA_LORA_A, SOMA_LORA_B, SOMA_PREFIX, checkpoint_meta,
                     checkpoint_semantics, check_adapter_keys_fit, copied_meta, few,
                     recorded_lora_cfg, strip_ema)
from .skeleton import float32_weights, linear_skeleton

__all__ = ['is_adapter_key', 'adapter_ranks', 'require_adapters', 'output_meta',
           'check_adapter_fits', 'soma_config_of', 'release_adapter_config',
           'skeleton_soma_model', 'check_layer_sets', 'residual_weights', 'extract_soma',
           'extract_soma_dgod', 'merge_soma', 'fold_soma']


# --------------------------------------------------------------------------- key rules
def _key_rules(ckpt: dict, target_modules=None):
    """``(target_modules, layers_pattern)`` that select an adapter checkpoint's biases:
    ``target_modules`` when given, else the recorded adapter config's; its
    ``layers_pattern`` (None: no blocks); without a record DINOv2's (the release's)."""
    lora_cfg = recorded_lora_cfg(ckpt)
    if target_modules is None:
        target_modules = lora_cfg.get('target_modules') or DEFAULT_TARGET_MODULES
    return target_modules, lora_cfg.get('layers_pattern', DINOV2_LAYERS_PATTERN)


def _adapted_blocks(state_dict: dict, layers_pattern=DINOV2_LAYERS_PATTERN):
    """Block indices that hold lora keys (EMA ``module.`` keys count too); None without
    blocks (``layers_pattern=None``)."""
    if layers_pattern is None:
        return None
    found = {block_index(k, layers_pattern) for k in state_dict if ADAPTER_KEYWORD in k}
    return found - {None}


def is_adapter_key(key: str, target_modules: Sequence[str] = DEFAULT_TARGET_MODULES,
                   adapted_blocks: Optional[Set[int]] = None,
                   layers_pattern: Optional[str] = DINOV2_LAYERS_PATTERN) -> bool:
    """Whether a segmentor key belongs in an adapter checkpoint (``module.`` EMA keys too).

    True for the mask token, every ``lora`` key and the biases of the target layers
    (of ``adapted_blocks`` only, when given: the other blocks are frozen at pretrained values).
    ``layers_pattern``: the block container (``blocks`` for DINOv2, ``layer``/``layers``
    for the HF backbones; None: no blocks).
    """
    key = strip_ema(key)
    if ADAPTER_KEYWORD in key:
        return True
    if not key.startswith(SOMA_PREFIX):
        return False
    rest = key[len(SOMA_PREFIX):]
    if rest.rpartition('.')[2] in TRAINABLE_TOKEN_KEYWORDS:
        return True  # DINOv2's mask_token; HF: embeddings.mask_token
    if not rest.endswith('.bias'):
        return False
    module = rest[:-len('.bias')]
    block = None if layers_pattern is None else block_index(module, layers_pattern)
    if layers_pattern is not None and block is None:
        return False
    if not is_target_name(module, target_modules):
        return False
    return adapted_blocks is None or layers_pattern is None or block in adapted_blocks


def _is_head_key(key: str) -> bool:
    return strip_ema(key).startswith(HEAD_PREFIX)


def require_adapters(state_dict: dict, name: str) -> None:
    """A one-line error unless ``state_dict`` holds SoMA adapter keys."""
    if not isinstance(state_dict, dict) or not state_dict:
        raise CheckpointError(f'{name}: empty checkpoint, no state dict found')
    if not any(ADAPTER_KEYWORD in k and k.startswith(SOMA_PREFIX) for k in state_dict):
        raise CheckpointError(
            f"{name}: no adapter keys ('{SOMA_PREFIX}...{SOMA_LORA_A[1:]}'); it is not a "
            f'SoMA model checkpoint (first keys: {few(state_dict)})')


def output_meta(ckpt: dict, semantics: Optional[str] = None) -> dict:
    """The meta of a checkpoint derived from ``ckpt``: its ``soma`` and ``dataset_meta``
    entries, with ``semantics`` recorded when given."""
    out = copied_meta(ckpt, SOMA)
    if semantics is not None:
        if semantics not in (SEMANTICS_RELEASE, SEMANTICS_RESIDUAL):
            raise ValueError(f'semantics must be {SEMANTICS_RELEASE!r} or '
                             f'{SEMANTICS_RESIDUAL!r}, got {semantics!r}')
        out.setdefault(SOMA, {})['semantics'] = semantics
    return out


def adapter_ranks(adapter_sd: dict) -> Dict[str, int]:
    """``{layer name (backbone key, no prefix): rank}`` of the lora_A keys of a state dict."""
    layers = {}
    for key, value in adapter_sd.items():
        key = strip_ema(key)
        if key.startswith(SOMA_PREFIX) and key.endswith(SOMA_LORA_A):
            layers[key[len(SOMA_PREFIX):-len(SOMA_LORA_A)]] = value.shape[0]
    return layers


def _adapter_part(rest: str):
    for suffix, factor in ((SOMA_LORA_A, 'A'), (SOMA_LORA_B, 'B')):
        if rest.endswith(suffix):
            return rest[:-len(suffix)], factor
    return None


def check_adapter_fits(backbone: Dict[str, torch.Tensor], adapter_sd: dict) -> None:
    """One-line errors for SoMA adapter keys that cannot sit on this backbone."""
    for key in adapter_sd:
        plain = strip_ema(key)
        if plain.startswith(BACKBONE_PREFIX) and not plain.startswith(SOMA_PREFIX):
            raise CheckpointError(
                f'adapter key {key} is not under {SOMA_PREFIX!r}; not a SoMA checkpoint')
    check_adapter_keys_fit(backbone, adapter_sd, SOMA_PREFIX, _adapter_part)


# --------------------------------------------------------------------------- adapter config
def soma_config_of(soma_meta: dict, layers: Dict[str, int], name: str = 'adapter checkpoint'
                   ) -> SoMAConfig:
    """The SoMAConfig recorded in ``meta['soma']``, or the release's inferred from the keys."""
    cfg = soma_meta.get('lora_cfg') or soma_meta.get('config')
    if cfg:
        return SoMAConfig.from_dict(dict(cfg))
    return release_adapter_config(layers, name)


def release_adapter_config(layers: Dict[str, int], name: str = 'adapter checkpoint') -> SoMAConfig:
    """The adapter config of a checkpoint that records none (the release's), from its ranks.

    ``layers``: ``{layer name (blocks.<i>....): rank of its lora_A}``. The release always
    sets ``lora_alpha = r``, and its ``rank_ramp`` raises the rank of block ``i`` to
    ``r * f`` (f = 1, 2, 4, 8 from blocks 0, 12, 16, 20) with ``lora_alpha`` unchanged, so:

    * one rank ``r`` everywhere: ``r``, ``lora_alpha = r``, scale ``s = 1``;
    * ranks ``r * f`` following the ramp: ``r`` (the rank of ``f = 1``), ``lora_alpha = r``,
      ``rank_ramp=True``: the scale of a block is ``r / (r * f) = 1 / f`` (1, 1/2, 1/4, 1/8).

    Refused (one-line :class:`CheckpointError`), as the scale cannot be known: ranks that
    vary in no ramp pattern, and one rank on blocks that all lie in one ramp segment from
    block 12 on (with or without the ramp, scale 1 or ``1 / f``).
    """
    if not layers:
        raise CheckpointError(f'{name}: no adapter config in meta and no lora keys')
    block_of = {n: block_index(n, DINOV2_LAYERS_PATTERN) for n in layers}
    outside = [n for n, b in block_of.items() if b is None]
    if outside:
        raise CheckpointError(
            f"{name}: no adapter config in meta['{SOMA}'] and adapters outside DINOv2 "
            f"blocks ({few(outside, 1)}; another backbone?): its scale and blocks cannot be "
            f"known; record lora_cfg in meta['{SOMA}'] (SoMAMetaHook)")
    blocks = sorted(set(block_of.values()))
    suffixes = sorted({n.split('.')[-1] for n in layers})
    ramp = SoMAConfig(r=1, rank_ramp=True)
    factors = {ramp.rank_for_block(b) for b in blocks}
    fix = f"record lora_cfg (r, lora_alpha, rank_ramp) in meta['{SOMA}']"
    ranks = sorted(set(layers.values()))
    if len(ranks) == 1:
        if factors != {1} and len(factors) == 1:
            raise CheckpointError(
                f'{name}: no adapter config in meta and one rank r={ranks[0]} on blocks '
                f'{blocks[0]}..{blocks[-1]} (one segment of rank_ramp, which starts at '
                f'{list(RANK_RAMP_STARTS)}): the adapter scale is 1 without rank_ramp, '
                f'1/{factors.pop()} with it, and cannot be known; {fix}')
        return SoMAConfig(r=ranks[0], lora_alpha=ranks[0], target_modules=suffixes,
                          start_lora_idx=blocks[0])
    bases = {rank // ramp.rank_for_block(block_of[n]) for n, rank in layers.items()}
    if len(bases) != 1 or any(rank % ramp.rank_for_block(block_of[n])
                              for n, rank in layers.items()):
        raise CheckpointError(
            f'{name}: no adapter config in meta and adapter ranks {ranks} that vary across '
            f'layers in no rank_ramp pattern, so the adapter scale cannot be known; {fix}')
    base = bases.pop()
    return SoMAConfig(r=base, lora_alpha=base, rank_ramp=True, target_modules=suffixes,
                      start_lora_idx=blocks[0])


def skeleton_soma_model(weights: dict, config: SoMAConfig, init: bool) -> SoMAModel:
    """A ``SoMAModel`` around a skeleton of ``weights`` (``{name: (weight, bias)}``)."""
    return SoMAModel(config, linear_skeleton(weights), init_adapters=init)


def check_layer_sets(adapted: Dict[str, nn.Module], layers: Dict[str, int], where: str) -> None:
    """One-line errors when the config's adapted layers or ranks are not the checkpoint's."""
    if set(adapted) != set(layers):
        extra, lacking = sorted(set(adapted) - set(layers)), sorted(set(layers) - set(adapted))
        raise CheckpointError(
            f'{where}: the adapter config does not adapt the layers that hold lora keys '
            f'(config only: {few(extra) or "-"}; checkpoint only: {few(lacking) or "-"})')
    for name, module in adapted.items():
        if module.r != layers[name]:
            raise CheckpointError(
                f'{where}: adapter rank mismatch at {SOMA_PREFIX}{name}{SOMA_LORA_A}: the '
                f'checkpoint has r={layers[name]}, its adapter config gives r={module.r}')


def residual_weights(backbone: Dict[str, torch.Tensor], layers: Dict[str, int], soma_meta: dict,
                     device: Device = 'cpu') -> Dict[str, torch.Tensor]:
    """``{layer.weight: W_res}``: the SoMA initialisation re-run on the pretrained weights."""
    if not layers:
        return {}
    config = soma_config_of(soma_meta, layers)
    model = skeleton_soma_model(float32_weights(backbone, layers, device), config, init=True)
    adapted = model.adapted_layers()
    check_layer_sets(adapted, layers, f"adapter checkpoint (meta['{SOMA}'])")
    return {f'{name}.weight': module.weight.detach().to('cpu').clone()
            for name, module in adapted.items()}


# --------------------------------------------------------------------------- extract
def extract_soma(full_ckpt: dict, target_modules: Optional[Sequence[str]] = None,
                 semantics: Optional[str] = None) -> dict:
    """Adapter + head checkpoint of a trained segmentor (the released layout, SPEC 4): the
    mask token, every ``lora`` key, the target biases of the adapted blocks (the others are
    frozen) and every ``decode_head.*`` key, of ``state_dict`` and ``ema_state_dict``;
    ``meta['soma']`` and ``dataset_meta`` copied, ``semantics`` overriding the record."""
    state_dict = get_state_dict(full_ckpt)
    require_adapters(state_dict, 'final checkpoint')
    target_modules, pattern = _key_rules(full_ckpt, target_modules)
    blocks = _adapted_blocks(state_dict, pattern)

    def keep(key):
        return is_adapter_key(key, target_modules, blocks, pattern) or _is_head_key(key)

    out = {'state_dict': {k: v for k, v in state_dict.items() if keep(k)}}
    ema = full_ckpt.get(EMA_STATE_DICT) if 'state_dict' in full_ckpt else None
    if isinstance(ema, dict):
        out[EMA_STATE_DICT] = {k: v for k, v in ema.items() if keep(k)}
    out['meta'] = output_meta(full_ckpt, semantics)
    checkpoint_semantics(out)  # validates a recorded value
    return out


def extract_soma_dgod(full_ckpt: dict, target_modules: Optional[Sequence[str]] = None,
                      semantics: Optional[str] = None) -> dict:
    """Adapter + neck + heads checkpoint of a trained detector: every key without
    ``backbone``, plus the mask token, the ``lora`` keys and the target biases; no EMA."""
    state_dict = get_state_dict(full_ckpt)
    require_adapters(state_dict, 'final checkpoint')
    target_modules, pattern = _key_rules(full_ckpt, target_modules)
    blocks = _adapted_blocks(state_dict, pattern)
    out = {'state_dict': {k: v for k, v in state_dict.items() if 'backbone' not in k
                          or is_adapter_key(k, target_modules, blocks, pattern)}}
    out['meta'] = output_meta(full_ckpt, semantics)
    checkpoint_semantics(out)
    return out


# --------------------------------------------------------------------------- merge
def merge_soma(backbone: Dict[str, torch.Tensor], adapter_ckpt: dict, device: Device = 'cpu'
               ) -> dict:
    """Full checkpoint = converted backbone (plain keys) + adapter/head checkpoint (SPEC 4).

    Backbone keys get ``backbone.model.`` (and ``module.backbone.model.`` in the EMA copy,
    made only when the adapter has one); then the adapter's keys overwrite. For the
    'residual' semantics the adapted weights become ``W_res``, rebuilt with the SoMA
    initialisation on ``device`` (use the training device for a bit-exact rebuild).
    Returns ``{'state_dict', ['ema_state_dict'], 'meta'}`` with ``meta['soma']['semantics']``.
    """
    adapter = get_state_dict(adapter_ckpt)
    adapter_ema = adapter_ckpt.get(EMA_STATE_DICT) if 'state_dict' in adapter_ckpt else None
    require_adapters(adapter, 'adapter checkpoint')
    check_adapter_fits(backbone, adapter)
    if isinstance(adapter_ema, dict):
        check_adapter_fits(backbone, adapter_ema)
    semantics = checkpoint_semantics(adapter_ckpt)
    meta = output_meta(adapter_ckpt, semantics)

    base = dict(backbone)
    if semantics == SEMANTICS_RESIDUAL:
        # layers whose weight the adapter itself carries (a full checkpoint) need no rebuild
        layers = {n: r for n, r in adapter_ranks(adapter).items()
                  if f'{SOMA_PREFIX}{n}.weight' not in adapter}
        base.update(residual_weights(backbone, layers, meta[SOMA], device))
    state_dict = {SOMA_PREFIX + k: v for k, v in base.items()}
    state_dict.update(adapter)
    out = {'state_dict': state_dict}
    if isinstance(adapter_ema, dict):
        ema = {EMA_PREFIX + SOMA_PREFIX + k: v for k, v in base.items()}
        ema.update(adapter_ema)
        out[EMA_STATE_DICT] = ema
    out['meta'] = meta
    return out


# --------------------------------------------------------------------------- fold
def fold_soma(full_ckpt: dict) -> dict:
    """Fold ``s * B @ A`` into the weights of a full checkpoint and drop the adapters.

    The result has the plain backbone keys under ``backbone.`` (no ``.model.``, no ``lora``)
    plus the heads, so it loads into a model whose backbone has no ``lora_cfg``. The sum is
    computed by ``soma.peft`` (``SoMAModel.merge_and_unload``) with the recorded adapter
    config; a released checkpoint records none: rank from the adapter shapes and the
    release's ``lora_alpha = r`` (:func:`release_adapter_config`). EMA is dropped.
    """
    state_dict = get_state_dict(full_ckpt)
    require_adapters(state_dict, 'full checkpoint')
    layers = adapter_ranks(state_dict)
    config = soma_config_of(checkpoint_meta(full_ckpt).get(SOMA) or {}, layers,
                            'full checkpoint')
    weights, layer_sd = {}, {}
    for name in layers:
        key = f'{SOMA_PREFIX}{name}'
        for suffix in ('.weight', '.bias', SOMA_LORA_A, SOMA_LORA_B):
            if key + suffix in state_dict:
                layer_sd[name + suffix] = state_dict[key + suffix]
        if f'{key}.weight' not in state_dict:
            raise CheckpointError(f'full checkpoint: {key}.weight is missing; merge the '
                                  f'adapter with a backbone first')
        weights[name] = (state_dict[f'{key}.weight'], state_dict.get(f'{key}.bias'))
    soma_model = skeleton_soma_model(weights, config, init=False)
    check_layer_sets(soma_model.adapted_layers(), layers, 'full checkpoint')
    soma_model.model.load_state_dict(layer_sd, strict=True)
    plain = soma_model.merge_and_unload().state_dict()
    out_sd = {}
    for key, value in state_dict.items():
        if not key.startswith(SOMA_PREFIX):
            out_sd[key] = value
        elif ADAPTER_KEYWORD not in key:
            rest = key[len(SOMA_PREFIX):]
            folded = plain.get(rest) if rest.endswith('.weight') else None
            if folded is not None:
                value = folded.to(value.dtype)
            out_sd[BACKBONE_PREFIX + rest] = value
    out_meta = output_meta(full_ckpt)
    out_meta.setdefault(SOMA, {})['folded'] = True
    return {'state_dict': out_sd, 'meta': out_meta}
