"""Moving SoMA weights between files, and checking a checkpoint against a model.

This module is the one owner of the checkpoint key layout (SPEC 4):

* backbone keys: ``backbone.model.<dinov2 key>`` (the adapter wrapper holds the ViT as
  ``.model``); with adapters folded into plain weights: ``backbone.<dinov2 key>``;
* an ``HFVisionBackbone``: the same with ``hf_model.<transformers key>`` for the DINOv2 key;
  its "converted backbone" is the transformers folder of its config (``model=<folder>``,
  ``config.json`` + weights), read as the backbone reads it
  (:func:`soma.models.backbones.hf_vision.hf_backbone_state_dict`);
* EMA copies (mmengine ``EMAHook``, key ``ema_state_dict``): the same keys behind ``module.``;
* adapter checkpoints keep ``backbone.model.mask_token``, every key containing ``lora``, the
  biases of the target layers and every head key (``decode_head.*``). The target layers and
  blocks follow the recorded adapter config (``meta['soma']['lora_cfg']``: ``target_modules``,
  ``layers_pattern``; DINOv2's ``q k v proj fc1 fc2`` in ``blocks.<i>.`` without one).

Two semantics of the adapted weight (SPEC 3, "Defect"), recorded in ``meta['soma']``:

* ``'release'`` (a released checkpoint: no ``meta['soma']``, or semantics 'release'):
  ``weight = W_pretrained``, the layer adds ``s * B @ A``;
* ``'residual'`` (this project): ``weight = W_res = W_pretrained - s * B0 @ A0`` with ``B0, A0``
  the SVD initialisation. :func:`merge_soma_weights` rebuilds ``W_res`` from the converted
  backbone by re-running the same deterministic SoMA initialisation (``soma.peft``) with the
  adapter config stored in the meta, so that extract-then-merge reproduces the model exactly
  (bit for bit when the initialisation runs on the same kind of device as in training).
"""
import copy
import os
import os.path as osp

import torch
from torch import nn

from soma.apis.legacy_keys import rename_legacy_codetr_checkpoint
from soma.peft.config import (ADAPTER_KEYWORD, DEFAULT_TARGET_MODULES, META_KEY,
                              SEMANTICS_RELEASE, SEMANTICS_RESIDUAL, TRAINABLE_TOKEN_KEYWORDS,
                              WRAPPED_MODEL_ATTR)
from soma.utils.checkpoint_io import (EMA_STATE_DICT, CheckpointError, get_state_dict,
                                      load_checkpoint_file, save_checkpoint_file)

__all__ = [
    'BACKBONE_PREFIX', 'PLAIN_BACKBONE_PREFIX', 'EMA_PREFIX', 'HEAD_PREFIX',
    'load_soma_checkpoint_file', 'checkpoint_semantics', 'is_adapter_key',
    'extract_soma_weights', 'extract_soma_dgod_weights', 'merge_soma_weights',
    'fold_adapters', 'generate_full_weights', 'check_checkpoint_for_model',
    'prepare_checkpoint', 'load_soma_checkpoint', 'extract_file', 'merge_file',
    'release_adapter_config', 'adapted_layers_in', 'check_adapter_keys_fit', 'copied_meta'
]

BACKBONE_PREFIX = f'backbone.{WRAPPED_MODEL_ATTR}.'
PLAIN_BACKBONE_PREFIX = 'backbone.'
EMA_PREFIX = 'module.'
HEAD_PREFIX = 'decode_head.'
MASK_TOKEN = 'mask_token'
DINOV2_LAYERS_PATTERN = 'blocks'  # the block container of our DINOv2 (and the release's)
LORA_A, LORA_B = f'.{ADAPTER_KEYWORD}_A.weight', f'.{ADAPTER_KEYWORD}_B.weight'

CONVERT_SCRIPT = 'tools/convert_models/convert_dinov2_sora.py'
PRETRAINED_FILE = 'checkpoints/dinov2_vitl14_pretrain.pth'
CONVERTED_FILE = 'checkpoints/dinov2_sora_converted.pth'


def _few(keys, n=3):
    keys = sorted(keys)
    more = f' and {len(keys) - n} more' if len(keys) > n else ''
    return ', '.join(keys[:n]) + more


def _name(ckpt, default):
    return ckpt if isinstance(ckpt, (str, os.PathLike)) else default


# --------------------------------------------------------------------------- file level
def load_soma_checkpoint_file(path_or_ckpt):
    """A checkpoint dict from a path (``.pth``/``.safetensors``) or a dict (passed through).

    The release's Co-DETR key names are replaced by ours here, in ``state_dict`` and
    ``ema_state_dict`` (:mod:`soma.apis.legacy_keys`, logged), so every loader, check and
    tool below sees this project's layout and writes it.
    """
    if not isinstance(path_or_ckpt, dict):
        return rename_legacy_codetr_checkpoint(load_checkpoint_file(path_or_ckpt),
                                               os.fspath(path_or_ckpt))
    return rename_legacy_codetr_checkpoint(path_or_ckpt, 'the checkpoint dict')


def checkpoint_semantics(ckpt):
    """'release' or 'residual': what the adapted ``weight`` of a checkpoint holds."""
    meta = ckpt.get('meta') if isinstance(ckpt, dict) and 'state_dict' in ckpt else None
    soma_meta = (meta or {}).get(META_KEY) or {}
    semantics = soma_meta.get('semantics', SEMANTICS_RELEASE)
    if semantics not in (SEMANTICS_RELEASE, SEMANTICS_RESIDUAL):
        raise CheckpointError(
            f"meta['{META_KEY}']['semantics'] is {semantics!r}; expected "
            f"{SEMANTICS_RELEASE!r} or {SEMANTICS_RESIDUAL!r}")
    return semantics


# --------------------------------------------------------------------------- key rules
def _recorded_lora_cfg(ckpt):
    """The adapter config dict recorded in ``meta['soma']`` ({} when none, e.g. a release)."""
    meta = ckpt.get('meta') if isinstance(ckpt, dict) and 'state_dict' in ckpt else None
    soma_meta = (meta if isinstance(meta, dict) else {}).get(META_KEY) or {}
    return dict(soma_meta.get('lora_cfg') or soma_meta.get('config') or {})


def _key_rules(ckpt, target_modules=None):
    """``(target_modules, layers_pattern)`` that select an adapter checkpoint's biases:
    ``target_modules`` when given, else the recorded adapter config's; its
    ``layers_pattern`` (None: no blocks); without a record DINOv2's (the release's)."""
    lora_cfg = _recorded_lora_cfg(ckpt)
    if target_modules is None:
        target_modules = lora_cfg.get('target_modules') or DEFAULT_TARGET_MODULES
    return target_modules, lora_cfg.get('layers_pattern', DINOV2_LAYERS_PATTERN)


def _is_target(module_name, target_modules, layers_pattern=DINOV2_LAYERS_PATTERN):
    """Whether a module name is a target layer in a block (soma.peft's name rules);
    with ``layers_pattern=None`` any target layer."""
    from soma.peft.model import block_index, is_target_name
    in_block = layers_pattern is None or block_index(module_name, layers_pattern) is not None
    return in_block and is_target_name(module_name, target_modules)


def _adapted_blocks(state_dict, layers_pattern=DINOV2_LAYERS_PATTERN):
    """Block indices that hold lora keys (EMA ``module.`` keys count too); None without
    blocks (``layers_pattern=None``)."""
    from soma.peft.model import block_index
    if layers_pattern is None:
        return None
    found = {block_index(k, layers_pattern) for k in state_dict if ADAPTER_KEYWORD in k}
    return found - {None}


def is_adapter_key(key, target_modules=DEFAULT_TARGET_MODULES, adapted_blocks=None,
                   layers_pattern=DINOV2_LAYERS_PATTERN):
    """Whether a segmentor key belongs in an adapter checkpoint (``module.`` EMA keys too).

    True for the mask token, every ``lora`` key and the biases of the target layers
    (of ``adapted_blocks`` only, when given: the other blocks are frozen at pretrained values).
    ``layers_pattern``: the block container (``blocks`` for DINOv2, ``layer``/``layers``
    for the HF backbones; None: no blocks).
    """
    from soma.peft.model import block_index
    if key.startswith(EMA_PREFIX):
        key = key[len(EMA_PREFIX):]
    if ADAPTER_KEYWORD in key:
        return True
    if not key.startswith(BACKBONE_PREFIX):
        return False
    rest = key[len(BACKBONE_PREFIX):]
    if rest.rpartition('.')[2] in TRAINABLE_TOKEN_KEYWORDS:
        return True  # DINOv2's mask_token; HF: embeddings.mask_token
    if not rest.endswith('.bias') or not _is_target(rest[:-5], target_modules, layers_pattern):
        return False
    return (adapted_blocks is None or layers_pattern is None
            or block_index(rest, layers_pattern) in adapted_blocks)


def _is_head_key(key):
    return key.startswith(HEAD_PREFIX) or key.startswith(EMA_PREFIX + HEAD_PREFIX)


def _require_adapters(state_dict, name):
    if not isinstance(state_dict, dict) or not state_dict:
        raise CheckpointError(f'{name}: empty checkpoint, no state dict found')
    if not any(ADAPTER_KEYWORD in k and k.startswith(BACKBONE_PREFIX) for k in state_dict):
        raise CheckpointError(
            f"{name}: no adapter keys ('{BACKBONE_PREFIX}...{LORA_A[1:]}'); it is not a "
            f'SoMA model checkpoint (first keys: {_few(state_dict)})')


def copied_meta(ckpt, adapter_key):
    """A deep copy of the ``meta`` entries a derived checkpoint keeps: the adapter's
    (``adapter_key``: ``'soma'`` or ``'peft'``) and ``dataset_meta``."""
    meta = ckpt.get('meta') if 'state_dict' in ckpt else None
    meta = meta if isinstance(meta, dict) else {}
    return {k: copy.deepcopy(meta[k]) for k in (adapter_key, 'dataset_meta') if k in meta}


def _output_meta(ckpt, semantics=None):
    out = copied_meta(ckpt, META_KEY)
    if semantics is not None:
        if semantics not in (SEMANTICS_RELEASE, SEMANTICS_RESIDUAL):
            raise ValueError(f'semantics must be {SEMANTICS_RELEASE!r} or '
                             f'{SEMANTICS_RESIDUAL!r}, got {semantics!r}')
        out.setdefault(META_KEY, {})['semantics'] = semantics
    return out


def _peft_meta(ckpt, name, semantics=None):
    """``meta['peft']`` of a peft model's checkpoint (:mod:`soma.apis.peft_checkpoint`),
    else None (a SoMA checkpoint)."""
    from soma.apis.peft_checkpoint import peft_meta_of
    meta = peft_meta_of(ckpt, name)
    if meta is not None and semantics is not None:
        raise ValueError(f'{name}: a peft model checkpoint; semantics={semantics!r} applies to '
                         f'SoMA checkpoints only (its meta records the base weights)')
    return meta


# --------------------------------------------------------------------------- extract
def extract_soma_weights(full_ckpt, target_modules=None, semantics=None):
    """Adapter + head checkpoint of a trained segmentor (the released layout, SPEC 4).

    Keeps ``backbone.model.mask_token``, every ``lora`` key, the biases of the target layers
    in the adapted blocks (the others are frozen) and every ``decode_head.*`` key, in
    ``state_dict`` and (when present) ``ema_state_dict``. ``target_modules`` (the biases
    kept) default to the recorded adapter config's (DINOv2's six without one); its
    ``layers_pattern`` names the blocks (any backbone). ``meta['soma']`` (semantics,
    adapter config) and ``meta['dataset_meta']`` are copied; ``semantics`` overrides the
    recorded semantics (a checkpoint without it counts as 'release').

    A peft model's checkpoint (``meta['peft']``) goes to
    :func:`soma.apis.peft_checkpoint.extract_peft_weights` (``target_modules`` unused).
    """
    full_ckpt = load_soma_checkpoint_file(full_ckpt)
    if _peft_meta(full_ckpt, 'final checkpoint', semantics) is not None:
        from soma.apis.peft_checkpoint import extract_peft_weights
        return extract_peft_weights(full_ckpt)
    state_dict = get_state_dict(full_ckpt)
    _require_adapters(state_dict, 'final checkpoint')
    target_modules, pattern = _key_rules(full_ckpt, target_modules)
    blocks = _adapted_blocks(state_dict, pattern)
    keep = lambda k: (is_adapter_key(k, target_modules, blocks, pattern)  # noqa: E731
                      or _is_head_key(k))
    out = {'state_dict': {k: v for k, v in state_dict.items() if keep(k)}}
    ema = full_ckpt.get(EMA_STATE_DICT) if 'state_dict' in full_ckpt else None
    if isinstance(ema, dict):
        out[EMA_STATE_DICT] = {k: v for k, v in ema.items() if keep(k)}
    out['meta'] = _output_meta(full_ckpt, semantics)
    checkpoint_semantics(out)  # validates a recorded value
    return out


def extract_soma_dgod_weights(full_ckpt, target_modules=None, semantics=None):
    """Adapter + neck + heads checkpoint of a trained detector.

    Keeps every key that does not contain ``backbone`` (neck, query/RPN/RoI/bbox heads), plus
    the mask token, the ``lora`` keys and the target biases. The EMA copy is dropped.
    A peft model's checkpoint: :func:`soma.apis.peft_checkpoint.extract_peft_weights`.
    """
    full_ckpt = load_soma_checkpoint_file(full_ckpt)
    if _peft_meta(full_ckpt, 'final checkpoint', semantics) is not None:
        from soma.apis.peft_checkpoint import extract_peft_weights
        return extract_peft_weights(full_ckpt, keep_ema=False)
    state_dict = get_state_dict(full_ckpt)
    _require_adapters(state_dict, 'final checkpoint')
    target_modules, pattern = _key_rules(full_ckpt, target_modules)
    blocks = _adapted_blocks(state_dict, pattern)
    out = {'state_dict': {k: v for k, v in state_dict.items() if 'backbone' not in k
                          or is_adapter_key(k, target_modules, blocks, pattern)}}
    out['meta'] = _output_meta(full_ckpt, semantics)
    checkpoint_semantics(out)
    return out


# --------------------------------------------------------------------------- merge
def _hf_folder(backbone_ckpt):
    """The transformers folder a backbone argument names (the folder or its config.json)."""
    if not isinstance(backbone_ckpt, (str, os.PathLike)):
        return None
    path = os.fspath(backbone_ckpt)
    if osp.isdir(path):
        return path
    if osp.basename(path) == 'config.json':
        return osp.dirname(path) or '.'
    return None


def _hf_backbone_state_dict(folder, name):
    """``hf_model.*`` keys of a transformers folder, as HFVisionBackbone loads it (without
    transformers' loading progress bar: the tools' stderr is for their one-line errors)."""
    from transformers.utils import logging as hf_logging

    from soma.models.backbones.hf_vision import hf_backbone_state_dict
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return hf_backbone_state_dict(folder)
    except (OSError, ValueError) as e:  # no config.json, another model type, no weights
        lines = str(e).strip().splitlines() or [type(e).__name__]
        raise CheckpointError(f'{name} {folder}: {lines[0]}') from None
    finally:
        if bar:
            hf_logging.enable_progress_bar()


def _backbone_state_dict(backbone_ckpt, name='backbone checkpoint'):
    """Plain backbone keys of a backbone checkpoint: converted DINOv2 keys
    (``blocks.0.attn.q.weight`` ...), or ``hf_model.*`` keys of a transformers folder (the
    weights of an HFVisionBackbone on it) or of a file holding them."""
    from soma.models.backbones.hf_vision import HF_MODEL_PREFIX
    folder = _hf_folder(backbone_ckpt)
    if folder is not None:
        return _hf_backbone_state_dict(folder, name)
    state_dict = get_state_dict(load_soma_checkpoint_file(backbone_ckpt))
    state_dict = {k: v for k, v in state_dict.items() if torch.is_tensor(v)}
    for prefix in (BACKBONE_PREFIX, PLAIN_BACKBONE_PREFIX):
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
            break
    fused = [k for k in state_dict if k.endswith('attn.qkv.weight')]
    if fused:
        raise CheckpointError(
            f'{name}: holds an unconverted DINOv2 ({fused[0]}); convert it first: python '
            f'{CONVERT_SCRIPT} {_name(backbone_ckpt, PRETRAINED_FILE)} {CONVERTED_FILE}')
    if 'pos_embed' not in state_dict and not any(k.startswith(HF_MODEL_PREFIX)
                                                 for k in state_dict):
        raise CheckpointError(
            f'{name}: not a converted DINOv2 backbone, it has no pos_embed key '
            f'(first keys: {_few(state_dict)}); for an HFVisionBackbone pass its '
            f'transformers folder')
    lora = [k for k in state_dict if ADAPTER_KEYWORD in k]
    if lora:
        raise CheckpointError(f'{name}: holds adapter keys ({_few(lora, 1)}); pass the '
                              f'converted backbone, not a SoMA checkpoint')
    return state_dict


def _adapted_layers(adapter_sd):
    """``{layer name (dinov2 key, no prefix): rank}`` for the lora_A keys of an adapter."""
    layers = {}
    for key, value in adapter_sd.items():
        if key.startswith(EMA_PREFIX):
            key = key[len(EMA_PREFIX):]
        if key.startswith(BACKBONE_PREFIX) and key.endswith(LORA_A):
            layers[key[len(BACKBONE_PREFIX):-len(LORA_A)]] = value.shape[0]
    return layers


def check_adapter_keys_fit(backbone, adapter_sd, prefix, adapter_part):
    """One-line errors for the keys of ``adapter_sd`` (state dict or EMA copy) that cannot sit
    on the converted ``backbone`` (plain keys): the shared check of SoMA and peft merges.

    Keys under ``prefix`` (``module.`` EMA keys too) are checked; ``adapter_part(rest)`` of
    the part after the prefix gives ``(layer, 'A' | 'B' | None)`` for an adapter key (the
    layer must have a base weight; an ``A`` factor must match its input width, a ``B`` factor
    its output width) and None for a plain key (same shape as the backbone's, if it has it).
    """
    for key, value in adapter_sd.items():
        plain = key[len(EMA_PREFIX):] if key.startswith(EMA_PREFIX) else key
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


def _soma_adapter_part(rest):
    for suffix, factor in ((LORA_A, 'A'), (LORA_B, 'B')):
        if rest.endswith(suffix):
            return rest[:-len(suffix)], factor
    return None


def _check_adapter_fits(backbone, adapter_sd):
    """One-line errors for SoMA adapter keys that cannot sit on this backbone."""
    for key in adapter_sd:
        plain = key[len(EMA_PREFIX):] if key.startswith(EMA_PREFIX) else key
        if plain.startswith(PLAIN_BACKBONE_PREFIX) and not plain.startswith(BACKBONE_PREFIX):
            raise CheckpointError(
                f'adapter key {key} is not under {BACKBONE_PREFIX!r}; not a SoMA checkpoint')
    check_adapter_keys_fit(backbone, adapter_sd, BACKBONE_PREFIX, _soma_adapter_part)


def _skeleton(weights):
    """An nn.Module tree with one nn.Linear per ``name -> (weight, bias)``, at that name."""
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


def _soma_config(soma_meta, layers, name='adapter checkpoint'):
    """The SoMAConfig recorded in ``meta['soma']``, or the release's inferred from the keys."""
    from soma.peft.config import SoMAConfig
    cfg = soma_meta.get('lora_cfg') or soma_meta.get('config')
    if cfg:
        return SoMAConfig.from_dict(dict(cfg))
    return release_adapter_config(layers, name)


def release_adapter_config(layers, name='adapter checkpoint'):
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
    from soma.peft.config import RANK_RAMP_STARTS, SoMAConfig
    from soma.peft.model import block_index
    if not layers:
        raise CheckpointError(f'{name}: no adapter config in meta and no lora keys')
    block_of = {n: block_index(n, DINOV2_LAYERS_PATTERN) for n in layers}
    outside = [n for n, b in block_of.items() if b is None]
    if outside:
        raise CheckpointError(
            f"{name}: no adapter config in meta['{META_KEY}'] and adapters outside DINOv2 "
            f"blocks ({_few(outside, 1)}; another backbone?): its scale and blocks cannot be "
            f"known; record lora_cfg in meta['{META_KEY}'] (SoMAMetaHook)")
    blocks = sorted(set(block_of.values()))
    suffixes = sorted({n.split('.')[-1] for n in layers})
    ramp = SoMAConfig(r=1, rank_ramp=True)
    factors = {ramp.rank_for_block(b) for b in blocks}
    fix = f"record lora_cfg (r, lora_alpha, rank_ramp) in meta['{META_KEY}']"
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


def _soma_model(weights, config, init):
    """A ``SoMAModel`` around a skeleton of ``weights`` (``{name: (weight, bias)}``)."""
    from soma.peft.model import SoMAModel
    return SoMAModel(config, _skeleton(weights), init_adapters=init)


def _check_layer_sets(adapted, layers, where):
    if set(adapted) != set(layers):
        extra, lacking = sorted(set(adapted) - set(layers)), sorted(set(layers) - set(adapted))
        raise CheckpointError(
            f'{where}: the adapter config does not adapt the layers that hold lora keys '
            f'(config only: {_few(extra) or "-"}; checkpoint only: {_few(lacking) or "-"})')
    for name, module in adapted.items():
        if module.r != layers[name]:
            raise CheckpointError(
                f'{where}: adapter rank mismatch at {BACKBONE_PREFIX}{name}{LORA_A}: the '
                f'checkpoint has r={layers[name]}, its adapter config gives r={module.r}')


def _residual_weights(backbone, layers, soma_meta, device='cpu'):
    """``{layer.weight: W_res}``: the SoMA initialisation re-run on the pretrained weights."""
    if not layers:
        return {}
    config = _soma_config(soma_meta, layers)
    weights = {n: (backbone[f'{n}.weight'].to(device, torch.float32),
                   None if backbone.get(f'{n}.bias') is None
                   else backbone[f'{n}.bias'].to(device, torch.float32)) for n in layers}
    adapted = _soma_model(weights, config, init=True).adapted_layers()
    _check_layer_sets(adapted, layers, "adapter checkpoint (meta['soma'])")
    return {f'{name}.weight': module.weight.detach().to('cpu').clone()
            for name, module in adapted.items()}


def merge_soma_weights(backbone_ckpt, adapter_ckpt, device='cpu'):
    """Full segmentor checkpoint = converted backbone + adapter/head checkpoint (SPEC 4).

    Backbone keys get ``backbone.model.`` (and ``module.backbone.model.`` in the EMA copy,
    made only when the adapter has one); then the adapter's keys overwrite. For the
    'residual' semantics the adapted weights become ``W_res``, rebuilt with the SoMA
    initialisation on ``device`` (use the training device for a bit-exact rebuild).
    Returns ``{'state_dict', ['ema_state_dict'], 'meta'}`` with ``meta['soma']['semantics']``.
    A peft adapter (``meta['peft']``): :func:`soma.apis.peft_checkpoint.merge_peft_weights`.
    """
    backbone = _backbone_state_dict(backbone_ckpt)
    adapter_ckpt = load_soma_checkpoint_file(adapter_ckpt)
    if _peft_meta(adapter_ckpt, 'adapter checkpoint') is not None:
        from soma.apis.peft_checkpoint import merge_peft_weights
        return merge_peft_weights(backbone, adapter_ckpt, device=device)
    adapter = get_state_dict(adapter_ckpt)
    adapter_ema = adapter_ckpt.get(EMA_STATE_DICT) if 'state_dict' in adapter_ckpt else None
    _require_adapters(adapter, 'adapter checkpoint')
    _check_adapter_fits(backbone, adapter)
    if isinstance(adapter_ema, dict):
        _check_adapter_fits(backbone, adapter_ema)
    semantics = checkpoint_semantics(adapter_ckpt)
    meta = _output_meta(adapter_ckpt, semantics)

    base = dict(backbone)
    if semantics == SEMANTICS_RESIDUAL:
        layers = _adapted_layers(adapter)
        # layers whose weight the adapter itself carries (a full checkpoint) need no rebuild
        layers = {n: r for n, r in layers.items()
                  if f'{BACKBONE_PREFIX}{n}.weight' not in adapter}
        base.update(_residual_weights(backbone, layers, meta[META_KEY], device))
    state_dict = {BACKBONE_PREFIX + k: v for k, v in base.items()}
    state_dict.update(adapter)
    out = {'state_dict': state_dict}
    if isinstance(adapter_ema, dict):
        ema = {EMA_PREFIX + BACKBONE_PREFIX + k: v for k, v in base.items()}
        ema.update(adapter_ema)
        out[EMA_STATE_DICT] = ema
    out['meta'] = meta
    return out


# --------------------------------------------------------------------------- fold
def fold_adapters(full_ckpt):
    """Fold ``s * B @ A`` into the weights of a full checkpoint and drop the adapters.

    The result has plain DINOv2 keys under ``backbone.`` (no ``.model.``, no ``lora``) plus
    the heads, so it loads into a segmentor whose backbone has no ``lora_cfg``. The sum is
    computed by ``soma.peft`` (``SoMAModel.merge_and_unload``) with the recorded adapter
    config; a released checkpoint records none: rank from the adapter shapes and the
    release's ``lora_alpha = r`` (:func:`release_adapter_config`). EMA is dropped.
    A peft model (``meta['peft']``): :func:`soma.apis.peft_checkpoint.fold_peft_adapters`.
    """
    full_ckpt = load_soma_checkpoint_file(full_ckpt)
    if _peft_meta(full_ckpt, 'full checkpoint') is not None:
        from soma.apis.peft_checkpoint import fold_peft_adapters
        return fold_peft_adapters(full_ckpt)
    state_dict = get_state_dict(full_ckpt)
    _require_adapters(state_dict, 'full checkpoint')
    meta = full_ckpt.get('meta') if 'state_dict' in full_ckpt else None
    layers = _adapted_layers(state_dict)
    config = _soma_config((meta or {}).get(META_KEY) or {}, layers, 'full checkpoint')
    weights, layer_sd = {}, {}
    for name in layers:
        key = f'{BACKBONE_PREFIX}{name}'
        for suffix in ('.weight', '.bias', LORA_A, LORA_B):
            if key + suffix in state_dict:
                layer_sd[name + suffix] = state_dict[key + suffix]
        if f'{key}.weight' not in state_dict:
            raise CheckpointError(f'full checkpoint: {key}.weight is missing; merge the '
                                  f'adapter with a backbone first')
        weights[name] = (state_dict[f'{key}.weight'], state_dict.get(f'{key}.bias'))
    soma_model = _soma_model(weights, config, init=False)
    _check_layer_sets(soma_model.adapted_layers(), layers, 'full checkpoint')
    soma_model.model.load_state_dict(layer_sd, strict=True)
    plain = soma_model.merge_and_unload().state_dict()
    out_sd = {}
    for key, value in state_dict.items():
        if not key.startswith(BACKBONE_PREFIX):
            out_sd[key] = value
        elif ADAPTER_KEYWORD not in key:
            rest = key[len(BACKBONE_PREFIX):]
            folded = plain.get(rest) if rest.endswith('.weight') else None
            if folded is not None:
                value = folded.to(value.dtype)
            out_sd[PLAIN_BACKBONE_PREFIX + rest] = value
    out_meta = _output_meta(full_ckpt)
    out_meta.setdefault(META_KEY, {})['folded'] = True
    return {'state_dict': out_sd, 'meta': out_meta}


def generate_full_weights(backbone_ckpt, soma_ckpt, merge_adapters=False, device='cpu'):
    """A full checkpoint for evaluation from a converted backbone and an adapter checkpoint.

    Without ``merge_adapters`` this is :func:`merge_soma_weights` (loads into the SoMA
    config). With it, the adapters are folded into plain weights (:func:`fold_adapters`):
    a plain DINOv2 + head checkpoint with ``backbone.<key>`` keys that needs no SoMA code.
    """
    full = merge_soma_weights(backbone_ckpt, soma_ckpt, device=device)
    return fold_adapters(full) if merge_adapters else full


# --------------------------------------------------------------------------- checks
def _cfg_get(cfg, *path, default=None):
    node = cfg
    for part in path:
        if node is None:
            return default
        node = node.get(part) if hasattr(node, 'get') else getattr(node, part, None)
    return default if node is None else node


def _grid(n_tokens):
    side = int(round(n_tokens ** 0.5))
    return (side, side) if side * side == n_tokens else None


def _converted_name(height, width):
    if (height, width) == (512, 512):
        return CONVERTED_FILE
    return CONVERTED_FILE.replace('.pth', f'_{height}x{width}.pth')


def check_checkpoint_for_model(model, state_dict, cfg=None, checkpoint_path=None,
                               config_path=None, strict=True):
    """Raise a one-line :class:`CheckpointError` when ``state_dict`` cannot load into ``model``.

    Checked, in order: an adapter-only checkpoint used without backbone weights (names the
    missing keys and the command that fixes it), a backbone converted for another resolution
    than the config's (pos_embed grid), adapter keys for blocks the config does not adapt (or
    missing for blocks it adapts), rank/shape mismatches (key and both shapes), then (with
    ``strict``) any other missing or unexpected key.
    """
    expected = model.state_dict()
    ckpt = os.fspath(checkpoint_path) if checkpoint_path else 'CHECKPOINT'
    config_path = config_path or getattr(cfg, 'filename', None) or 'CONFIG'
    prefix = (BACKBONE_PREFIX if any(k.startswith(BACKBONE_PREFIX) for k in expected)
              else PLAIN_BACKBONE_PREFIX)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]

    # 1. adapter-only checkpoint without the backbone
    missing_bb = [k for k in missing if k.startswith(prefix) and ADAPTER_KEYWORD not in k]
    given_bb = [k for k in state_dict if k.startswith(PLAIN_BACKBONE_PREFIX)]
    adapter_only = all(ADAPTER_KEYWORD in k or k.endswith('.bias') or k.endswith(MASK_TOKEN)
                       for k in given_bb)
    if missing_bb and adapter_only:
        converted = CONVERTED_FILE
        pos = expected.get(prefix + 'pos_embed')
        grid = _grid(pos.shape[1] - 1) if pos is not None else None
        patch = _patch_size(expected, prefix)
        if grid and patch:
            converted = _converted_name(grid[0] * patch, grid[1] * patch)
        hf_folder = _cfg_get(cfg, 'model', 'backbone', 'model')
        if _cfg_get(cfg, 'model', 'backbone', 'type') == 'HFVisionBackbone' and isinstance(
                hf_folder, str):  # its converted backbone: the transformers folder
            converted = hf_folder
        merged = osp.join('checkpoints', 'merged_checkpoints', osp.basename(ckpt))
        raise CheckpointError(
            f'{ckpt} holds only adapter and head weights: {len(missing_bb)} backbone keys are '
            f'missing ({_few(missing_bb)}); add the converted backbone: python tools/test.py '
            f'{config_path} {ckpt} --backbone {converted} (or merge first: python '
            f'tools/merge_soma_weights.py --backbone_ckpt {converted} --soma_ckpt {ckpt} '
            f'--merged_ckpt {merged})')

    # 1b. plain backbone keys (adapters folded in) for a SoMA model
    plain_bb = [k for k in unexpected
                if k.startswith(PLAIN_BACKBONE_PREFIX) and not k.startswith(BACKBONE_PREFIX)]
    if prefix == BACKBONE_PREFIX and missing_bb and plain_bb:
        raise CheckpointError(
            f'{ckpt} has plain backbone keys ({_few(plain_bb, 1)}) but the model expects '
            f'{BACKBONE_PREFIX!r} keys (adapters folded in by generate_full_weights.py '
            f'--merge-adapters? such a checkpoint loads into a config without lora_cfg)')

    # 2. backbone converted for another resolution
    pos_key = prefix + 'pos_embed'
    if pos_key in expected and pos_key in state_dict:
        _check_resolution(expected[pos_key], state_dict[pos_key], expected, prefix, cfg, ckpt)

    # 3. adapters on other blocks than the config adapts
    lora_cfg = _cfg_get(cfg, 'model', 'backbone', 'lora_cfg') or {}
    cfg_desc = (f"start_lora_idx={lora_cfg.get('start_lora_idx', '?')}, "
                f"target_modules={lora_cfg.get('target_modules', '?')}") if lora_cfg else ''
    extra_lora = [k for k in unexpected if ADAPTER_KEYWORD in k]
    if extra_lora:
        blocks = _blocks(extra_lora, _layers_pattern_of(model))
        raise CheckpointError(
            f'{ckpt} has adapters for layers the config does not adapt (blocks {blocks}, '
            f'{len(extra_lora)} keys, e.g. {_few(extra_lora, 1)}); '
            f'{"the config has " + cfg_desc if cfg_desc else "the model has no adapters there"}')
    missing_lora = [k for k in missing if ADAPTER_KEYWORD in k]
    if missing_lora:
        raise CheckpointError(
            f'the config adapts layers that have no adapter in {ckpt} (blocks '
            f'{_blocks(missing_lora, _layers_pattern_of(model))}, {len(missing_lora)} keys, '
            f'e.g. {_few(missing_lora, 1)})'
            f'{"; the config has " + cfg_desc if cfg_desc else ""}')

    # 4. shapes
    for key, value in state_dict.items():
        if key not in expected or not torch.is_tensor(value):
            continue
        want = expected[key]
        if tuple(value.shape) == tuple(want.shape):
            continue
        if ADAPTER_KEYWORD in key:
            dim = 0 if key.endswith(LORA_A) else -1
            have_r, want_r = value.shape[dim], want.shape[dim]
            raise CheckpointError(
                f'adapter rank mismatch at {key}: shape {tuple(value.shape)} (r={have_r}) '
                f'in {ckpt}, {tuple(want.shape)} (r={want_r}) in the model; set '
                f'lora_cfg r={have_r} in {config_path}')
        raise CheckpointError(
            f'shape mismatch at {key}: {tuple(value.shape)} in {ckpt}, '
            f'{tuple(want.shape)} in the model built from {config_path}')

    if not strict:
        return
    # 5. everything else
    if missing:
        raise CheckpointError(
            f'{len(missing)} keys of the model are missing from {ckpt} ({_few(missing)})')
    if unexpected:
        raise CheckpointError(
            f'{ckpt} has {len(unexpected)} keys the model does not have ({_few(unexpected)})')


def _patch_size(expected, prefix):
    weight = expected.get(prefix + 'patch_embed.proj.weight')
    return None if weight is None else int(weight.shape[-1])


def _layers_pattern_of(model):
    """The block container of a SoMA model's backbone (its adapter config), else DINOv2's."""
    config = getattr(getattr(model, 'backbone', None), 'peft_config', None)
    return getattr(config, 'layers_pattern', DINOV2_LAYERS_PATTERN)


def _blocks(keys, layers_pattern=DINOV2_LAYERS_PATTERN):
    from soma.peft.model import block_index
    found = sorted({block_index(k, layers_pattern) for k in keys} - {None})
    return found or '?'


def _check_resolution(want, have, expected, prefix, cfg, ckpt):
    if tuple(want.shape) == tuple(have.shape):
        return
    if want.shape[-1] != have.shape[-1]:  # another architecture, not another resolution
        raise CheckpointError(
            f'{ckpt}: {prefix}pos_embed has embedding width {have.shape[-1]} (shape '
            f'{tuple(have.shape)}) but the model has {want.shape[-1]} (shape '
            f'{tuple(want.shape)}): a backbone of another size (e.g. ViT-S/B/L/g); use the '
            f'checkpoint converted for the arch of the config')
    patch = _patch_size(expected, prefix) or 16
    img_size = _cfg_get(cfg, 'model', 'backbone', 'img_size')
    if img_size is not None:
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        config_res = f'{h}x{w} (img_size {img_size}, patch {patch})'
    else:
        grid = _grid(want.shape[1] - 1) or (None, None)
        h, w = (grid[0] * patch, grid[1] * patch) if grid[0] else (512, 512)
        config_res = f'{h}x{w} (pos_embed {tuple(want.shape)})'
    grid = _grid(have.shape[1] - 1)
    ckpt_res = (f'{grid[0] * patch}x{grid[1] * patch} (pos_embed grid {grid[0]}x{grid[1]})'
                if grid else f'{have.shape[1] - 1} patch positions')
    raise CheckpointError(
        f'{ckpt}: the backbone was converted for {ckpt_res} but the config expects '
        f'{config_res}; convert for it: python {CONVERT_SCRIPT} {PRETRAINED_FILE} '
        f'{_converted_name(h, w)} --height {h} --width {w}')


# --------------------------------------------------------------------------- loading
def prepare_checkpoint(checkpoint, backbone=None, device='cpu'):
    """The checkpoint dict to load: the file itself, or merged with ``backbone`` when given."""
    ckpt = load_soma_checkpoint_file(checkpoint)
    if backbone is not None:
        if not any(ADAPTER_KEYWORD in k for k in get_state_dict(ckpt)):
            raise CheckpointError(
                f'{_name(checkpoint, "checkpoint")}: --backbone given but the checkpoint has no '
                f'adapter keys to merge with it')
        ckpt = merge_soma_weights(backbone, ckpt, device=device)
    return ckpt


def load_soma_checkpoint(model, checkpoint, backbone=None, cfg=None, config_path=None,
                         use_ema=False, strict=True, device='cpu'):
    """Check, then load a (possibly adapter-only) checkpoint into ``model``; returns the dict.

    ``backbone``: a converted DINOv2 file merged in first (:func:`merge_soma_weights`).
    ``use_ema``: load the ``ema_state_dict`` copy (its ``module.`` prefix and ``steps`` removed).
    """
    ckpt = prepare_checkpoint(checkpoint, backbone, device=device)
    if use_ema:
        ema = ckpt.get(EMA_STATE_DICT)
        if not isinstance(ema, dict):
            raise CheckpointError(
                f'{_name(checkpoint, "checkpoint")}: no {EMA_STATE_DICT} to load')
        state_dict = {k[len(EMA_PREFIX):]: v for k, v in ema.items() if k.startswith(EMA_PREFIX)}
    else:
        state_dict = get_state_dict(ckpt)
    check_checkpoint_for_model(model, state_dict, cfg, checkpoint_path=_name(checkpoint, None),
                               config_path=config_path, strict=strict)
    model.load_state_dict(state_dict, strict=strict)
    return ckpt


# --------------------------------------------------------------------------- loading by a runner
def adapted_layers_in(ckpt, layers):
    """``(has adapters, has weights)`` of a checkpoint about to be loaded into a SoMA model.

    ``layers``: the model's adapted layer names (relative to ``backbone.model``). Whether the
    state dict holds their ``lora_A`` keys, and whether it holds their ``weight`` too (a full
    checkpoint, whose semantics then say what the weights are). ``module.`` prefixes (a
    wrapped model's save) are read as mmengine's loading does, without them.
    """
    keys = {k[len(EMA_PREFIX):] if k.startswith(EMA_PREFIX) else k for k in get_state_dict(ckpt)}
    lora = [n for n in layers if f'{BACKBONE_PREFIX}{n}{LORA_A}' in keys]
    return bool(lora), any(f'{BACKBONE_PREFIX}{n}.weight' in keys for n in lora)


# --------------------------------------------------------------------------- CLI helpers
def _save(ckpt, path, overwrite=True):
    if not overwrite and osp.exists(path):
        raise FileExistsError(f'{path} exists')
    save_checkpoint_file(ckpt, path)
    return path


def extract_file(final_ckpt, soma_ckpt, target_modules=None, dgod=False, semantics=None):
    """Extract from a file and save (``.pth`` or ``.safetensors``, atomically)."""
    fn = extract_soma_dgod_weights if dgod else extract_soma_weights
    return _save(fn(final_ckpt, target_modules, semantics=semantics), soma_ckpt)


def merge_file(backbone_ckpt, soma_ckpt, merged_ckpt, merge_adapters=False, device='cpu'):
    """Merge files and save the full checkpoint (atomically)."""
    return _save(generate_full_weights(backbone_ckpt, soma_ckpt, merge_adapters, device),
                 merged_ckpt)

