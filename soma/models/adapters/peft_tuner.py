"""Adapters of the ``peft`` package (LoRA, DoRA, rsLoRA, PiSSA, OLoRA, MiCA, ...) on a backbone.

``peft_cfg`` in a config names a ``peft`` config class and its fields, e.g.
``dict(type='LoraConfig', r=16, lora_alpha=16, init_lora_weights='pissa')``. ``peft`` itself
injects the adapter (its tuner, in place: the backbone keeps its class), with this project's
rules around it:

* blocks: ``start_lora_idx`` (ours; default: the backbone's ``adapter_defaults()``, the
  release's 8 for DINOv2, a third of the depth for a transformers backbone) becomes peft's ``layers_to_transform = [start, ..., depth - 1]`` with
  ``layers_pattern`` the backbone's block container (``blocks`` / ``layer`` / ``layers``); or
  give ``layers_to_transform`` yourself. ``target_modules`` defaults to SoMA's (or the
  transformers family's). Every parameter of a block outside ``layers_to_transform`` is frozen.
* freezing: what peft leaves trainable (its adapters, its ``bias`` mode; MiCA's frozen
  ``lora_B`` stays frozen), minus ``ALWAYS_FROZEN_KEYWORDS``; re-applied at every ``train()``.
* init after load: peft's inits that read the base weight (``pissa``, ``pissa_niter_<N>``,
  ``olora``, ``mica``) and DoRA's magnitude run again on the weights as loaded
  (``init_cfg`` Pretrained / ``LoadBackboneHook``) by :meth:`PeftTuner.init_after_weights`,
  exactly where SoMA runs its SVD; loading a state dict that carries the adapter keys marks a
  layer initialised (no re-init). Data-driven inits (``eva``, ``corda``, ``lora_ga``) and
  ``loftq`` are refused.
* state-dict keys: the adapted layers' base weights keep the backbone's own names
  (``blocks.8.attn.q.weight``, not peft's ``...q.base_layer.weight``), so pretrained and
  converted checkpoints load as for any backbone; adapter keys are peft's
  (``blocks.8.attn.q.lora_A.default.weight``, DoRA ``...lora_magnitude_vector.default.weight``).
  With ``pissa``/``olora`` the stored base weight is peft's residual ``W - s*B@A``.
* :meth:`PeftTuner.merge_and_unload` is peft's own (the tuner's ``merge_and_unload``).
* checkpoints: :meth:`PeftTuner.checkpoint_meta` (``meta['peft']``, by ``SoMAMetaHook``)
  records what rebuilds the adapter from a file alone (``soma.checkpoints.peft_adapter``).

:class:`PeftTuner` is the adapter interface (:mod:`soma.models.adapters.base`) for them. The
``peft`` package is an optional dependency: imported inside the functions that need it.
"""
import dataclasses
import enum
import logging
import re

from typing import Callable, Dict, List

import torch
from torch import nn

from soma.peft.config import ADAPTER_KEYWORD, ALWAYS_FROZEN_KEYWORDS
from soma.peft.model import block_index, parameter_report

from .base import BackboneAdapter

__all__ = ['PeftTuner', 'build_peft_config', 'apply_peft_adapter', 'tuner_layers',
           'peft_cfg_of', 'adapter_prefix', 'residual_init_kind', 'weight_init_kind',
           'DATA_DRIVEN_INITS', 'WEIGHT_INITS', 'ADAPTER_NAME', 'PEFT_META_KEY',
           'BASE_RESIDUAL', 'BASE_PRETRAINED']

logger = logging.getLogger(__name__)

ADAPTER_NAME = 'default'  # peft's adapter name: keys <layer>.lora_A.<ADAPTER_NAME>.weight
DATA_DRIVEN_INITS = ('eva', 'corda', 'lora_ga')  # need activations / gradients of real data
WEIGHT_INITS = ('pissa', 'olora', 'mica')  # read the base weight ('pissa_niter_<N>' too)
_PENDING = '_soma_peft_init_pending'  # flag on a tuner layer: its init must (re)run
PEFT_META_KEY = 'peft'  # checkpoint['meta'][PEFT_META_KEY] = PeftTuner.checkpoint_meta()
BASE_RESIDUAL = 'residual'  # stored base weight = W - s*B0@A0 (pissa, olora)
BASE_PRETRAINED = 'pretrained'  # stored base weight = W (every other init)
# config fields that say nothing about the adapter (set by peft, or about a hub model)
_NOT_RECORDED = ('peft_type', 'peft_version', 'task_type', 'base_model_name_or_path',
                 'revision', 'inference_mode', 'auto_mapping')


def weight_init_kind(init) -> 'str | None':
    """'pissa' | 'olora' | 'mica' for inits that read the base weight, else None."""
    if not isinstance(init, str):
        return None
    low = init.lower()
    if low == 'pissa' or re.fullmatch(r'pissa_niter_\d+', low):
        return 'pissa'
    return low if low in ('olora', 'mica') else None


def residual_init_kind(init):
    """'pissa' | 'pissa_niter' | 'olora' for the inits that store ``W - s*B0@A0`` as the base
    weight ('pissa_niter': randomised, so it cannot be recomputed), else None."""
    kind = weight_init_kind(init)
    if kind == 'pissa' and init.lower() != 'pissa':
        return 'pissa_niter'
    return kind if kind in ('pissa', 'olora') else None


def _plain(value):
    """``value`` in the types a ``weights_only`` checkpoint load accepts."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value):
        return _plain(dataclasses.asdict(value))
    return value


def peft_cfg_of(config) -> dict:
    """The ``peft_cfg`` dict that rebuilds ``config`` (:func:`build_peft_config`): ``type`` and
    every field that differs from the class default, in plain types."""
    out = dict(type=type(config).__name__)
    for field in dataclasses.fields(config):
        if not field.init or field.name in _NOT_RECORDED:
            continue
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = dataclasses.MISSING
        value = getattr(config, field.name)
        if value != default:
            out[field.name] = _plain(value)
    return out


def adapter_prefix(config) -> str:
    """The name prefix of the adapter parameters of ``config``'s tuner (LoRA: 'lora_')."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING  # peft: optional dependency
    tuner_cls = PEFT_TYPE_TO_TUNER_MAPPING.get(config.peft_type)
    return getattr(tuner_cls, 'prefix', None) or ADAPTER_KEYWORD + '_'


def _depth(backbone: nn.Module, layers_pattern: str) -> int:
    depth = getattr(backbone, 'depth', None)
    if isinstance(depth, int):
        return depth
    indices = [block_index(n, layers_pattern) for n, _ in backbone.named_modules()]
    indices = [i for i in indices if i is not None]
    if not indices:
        raise ValueError(f'peft_cfg: {type(backbone).__name__} has no blocks '
                         f'"{layers_pattern}.<i>."; set layers_pattern in peft_cfg')
    return max(indices) + 1


def _backbone_defaults(backbone: nn.Module) -> dict:
    """The backbone's own ``adapter_defaults()`` (block container, target linears, first
    adapted block); a backbone without them needs peft_cfg to say where."""
    defaults = getattr(backbone, 'adapter_defaults', None)
    if defaults is None:
        raise ValueError(f'peft_cfg: {type(backbone).__name__} has no adapter_defaults(); set '
                         f'layers_pattern, target_modules and start_lora_idx in peft_cfg')
    return defaults()


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def build_peft_config(peft_cfg: dict, backbone: nn.Module):
    """The ``peft`` config object of ``peft_cfg`` for ``backbone``; one-line ``ValueError``s."""
    import peft  # optional dependency
    cfg = dict(peft_cfg)
    type_name = cfg.pop('type', None)
    cls = getattr(peft, type_name, None) if isinstance(type_name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, peft.PeftConfig)
            and type_name.endswith('Config')):
        raise ValueError(f"peft_cfg: type {type_name!r} is not a peft config class "
                         f"(e.g. 'LoraConfig', 'LoHaConfig', 'IA3Config')")
    names = {f.name for f in dataclasses.fields(cls)}
    init = cfg.get('init_lora_weights', True)
    if isinstance(init, str) and init.lower() in DATA_DRIVEN_INITS:
        raise ValueError(f'peft_cfg: init_lora_weights={init!r} is data-driven (needs a '
                         f'calibration pass over training data), not supported here; use a '
                         f'data-free init (True, pissa, olora, mica, ...)')
    if isinstance(init, str) and init.lower() == 'loftq':
        raise ValueError("peft_cfg: init_lora_weights='loftq' quantizes the base weights, "
                         'not supported here')
    start = cfg.pop('start_lora_idx', None)

    def default(key):  # the backbone's own, asked only where peft_cfg is silent
        return _backbone_defaults(backbone)[key]

    if 'layers_to_transform' in names:
        if 'layers_pattern' not in cfg:
            cfg['layers_pattern'] = default('layers_pattern')
        if cfg.get('layers_to_transform') is not None:
            if start is not None:
                raise ValueError('peft_cfg: give start_lora_idx or layers_to_transform, '
                                 'not both')
        else:
            start = default('start_lora_idx') if start is None else start
            depth = _depth(backbone, cfg['layers_pattern'])
            if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < depth:
                raise ValueError(f'peft_cfg: start_lora_idx={start!r} must be in 0..{depth - 1} '
                                 f'({type(backbone).__name__} has {depth} blocks)')
            cfg['layers_to_transform'] = list(range(start, depth))
    elif start is not None:
        raise ValueError(f'peft_cfg: {type_name} has no layers_to_transform, so '
                         f'start_lora_idx cannot apply')
    if 'target_modules' in names and 'target_modules' not in cfg:
        cfg['target_modules'] = default('target_modules')
    unknown = sorted(set(cfg) - names)
    if unknown:
        raise ValueError(f'peft_cfg: unknown {type_name} key(s) {unknown}')
    try:
        return cls(**cfg)
    except (TypeError, ValueError) as exc:
        raise ValueError(f'peft_cfg ({type_name}): {_first_line(exc)}') from None


def tuner_layers(module: nn.Module) -> Dict[str, nn.Module]:
    """peft's adapted layers in ``module`` (tuner layers around a base layer), by name."""
    from peft.tuners.tuners_utils import BaseTunerLayer  # peft: optional dependency
    return {n: m for n, m in module.named_modules()
            if isinstance(m, BaseTunerLayer) and hasattr(m, 'base_layer')}


def _base_keys(layer) -> tuple:
    base = layer.get_base_layer()
    return tuple(n for n, _ in base.named_parameters(recurse=False)) + tuple(
        n for n, _ in base.named_buffers(recurse=False))


def _plain_keys_on_save(module, state_dict, prefix, local_metadata):
    """State-dict post-hook: ``<layer>.base_layer.weight`` is saved as ``<layer>.weight``."""
    for key in _base_keys(module):
        old = f'{prefix}base_layer.{key}'
        if old in state_dict:
            state_dict[prefix + key] = state_dict.pop(old)


def _plain_keys_on_load(module, state_dict, prefix, local_metadata, strict, missing_keys,
                        unexpected_keys, error_msgs):
    """Load pre-hook: a plain ``<layer>.weight`` goes into the base layer; loading adapter
    keys marks the layer initialised, a plain weight alone marks its init pending."""
    moved = False
    for key in _base_keys(module):
        if prefix + key in state_dict:
            state_dict[f'{prefix}base_layer.{key}'] = state_dict.pop(prefix + key)
            moved = True
    has_adapter = any(k.startswith(prefix) and ADAPTER_KEYWORD in k[len(prefix):]
                      for k in state_dict)
    if has_adapter:
        setattr(module, _PENDING, False)
    elif moved and getattr(module, '_soma_peft_needs_weights', False):
        setattr(module, _PENDING, True)


class PeftTuner(BackboneAdapter):
    """The ``peft`` adapter of one backbone (kept as ``backbone.peft_adapter``, not a module).

    Args:
        config: the peft config (as requested; e.g. ``init_lora_weights='pissa'``).
        tuner: peft's tuner (e.g. ``LoraModel``) that injected the adapter; ``tuner.model`` is
            the backbone.
        trainable: names of the backbone parameters that train.
    """

    meta_key = PEFT_META_KEY
    base_prefix = ''  # adapted in place: the backbone's keys keep their names

    def __init__(self, config, tuner, trainable):
        self.config = config
        self.tuner = tuner
        self.trainable = frozenset(trainable)

    @classmethod
    def wrap(cls, backbone: nn.Module, peft_cfg: dict) -> 'PeftTuner':
        """Inject the adapter of ``peft_cfg`` into ``backbone`` (:func:`apply_peft_adapter`)."""
        return apply_peft_adapter(backbone, peft_cfg)

    @property
    def module(self) -> nn.Module:
        return self.tuner.model

    @property
    def backbone(self) -> nn.Module:
        return self.tuner.model

    @property
    def layers_pattern(self):
        pattern = getattr(self.config, 'layers_pattern', None)
        return pattern[0] if isinstance(pattern, (list, tuple)) else pattern

    def adapted_layers(self) -> Dict[str, nn.Module]:
        return tuner_layers(self.backbone)

    def adapter_keys(self) -> List[str]:
        prefix = adapter_prefix(self.config)
        return [k for k in self.backbone.state_dict()
                if any(part.startswith(prefix) for part in k.split('.'))]

    def freeze(self) -> None:
        """Only the parameters of :attr:`trainable` require grad."""
        for name, param in self.backbone.named_parameters():
            param.requires_grad_(name in self.trainable)

    def init_after_weights(self) -> int:
        """Run the weight-reading inits (and DoRA's magnitude) of the pending layers on the
        current base weights; return how many layers were initialised."""
        init = getattr(self.config, 'init_lora_weights', True)
        kind = weight_init_kind(init)
        count = 0
        with torch.no_grad():
            for layer in tuner_layers(self.backbone).values():
                if not getattr(layer, _PENDING, False):
                    continue
                if ADAPTER_NAME in getattr(layer, 'lora_A', {}):
                    if kind == 'pissa':
                        layer.pissa_init(ADAPTER_NAME, init)
                    elif kind == 'olora':
                        layer.olora_init(ADAPTER_NAME)
                    elif kind == 'mica':
                        layer.mica_init(ADAPTER_NAME)
                    if layer.use_dora.get(ADAPTER_NAME, False):
                        _refresh_dora_magnitude(layer)
                setattr(layer, _PENDING, False)
                count += 1
        if count:
            logger.info('peft: initialised %d adapted layer(s) on the loaded weights (%s%s)',
                        count, init, ', DoRA' if getattr(self.config, 'use_dora', False) else '')
        return count

    def trainable_parameter_report(self) -> dict:
        """:func:`parameter_report` of the backbone, titled with the peft config."""
        config = self.config
        title = (f'peft {type(config).__name__} trainable parameters: '
                 f'{len(self.adapted_layers())} adapted layers, r={getattr(config, "r", "-")}, '
                 f'init={getattr(config, "init_lora_weights", "-")!r}, '
                 f'use_dora={getattr(config, "use_dora", False)}, '
                 f'layers_to_transform={getattr(config, "layers_to_transform", None)}')
        return parameter_report(self.backbone, self.layers_pattern, title)

    def checkpoint_meta(self) -> dict:
        """To store under ``checkpoint['meta'][PEFT_META_KEY]`` (``SoMAMetaHook``), enough to
        rebuild the adapter from a checkpoint alone (``soma.checkpoints.peft_adapter``):

        * ``peft_cfg``: the resolved config (``type`` + non-default fields, including
          ``layers_to_transform``/``layers_pattern``/``target_modules``), for
          :func:`build_peft_config`;
        * ``start_lora_idx``: the first adapted block (None without ``layers_to_transform``);
        * ``base_weight``: ``'residual'`` (pissa, olora: the stored base weight of an adapted
          layer is ``W - s*B0@A0``) or ``'pretrained'``; ``init``: the residual init kind;
        * ``adapter_prefix``: the name prefix of the adapter parameters (LoRA: ``lora_``);
        * ``trainable``: the state-dict keys (backbone-relative) of the trained parameters
          (adapters, biases of the ``bias`` mode).
        """
        config = self.config
        layers = getattr(config, 'layers_to_transform', None)
        layers = [layers] if isinstance(layers, int) else layers
        kind = residual_init_kind(getattr(config, 'init_lora_weights', True))
        return dict(peft_cfg=peft_cfg_of(config),
                    start_lora_idx=min(layers) if layers else None,
                    base_weight=BASE_RESIDUAL if kind else BASE_PRETRAINED, init=kind,
                    adapter_prefix=adapter_prefix(config),
                    trainable=sorted(n.replace('.base_layer.', '.') for n in self.trainable))

    def merge_in_place(self) -> Callable[[], None]:
        """peft's own ``merge()`` of every unmerged layer; the undo copies the base layers'
        parameters back (the weight, and the bias ``lora_bias`` changes), marks the layers
        unmerged and drops the caches the merge added (DoRA's weight norm)."""
        saved = []
        with torch.no_grad():
            for layer in self.adapted_layers().values():
                if not hasattr(layer, 'merge') or layer.merged:
                    continue
                params = dict(layer.get_base_layer().named_parameters(recurse=False))
                copies = {n: p.detach().clone() for n, p in params.items()}
                caches = set(getattr(layer, '_caches', {}))
                saved.append((layer, params, copies, caches))
                layer.merge()

        def restore() -> None:
            with torch.no_grad():
                for layer, params, copies, caches in saved:
                    for name, param in params.items():
                        param.copy_(copies[name])
                    layer.merged_adapters = []
                    for key in set(getattr(layer, '_caches', {})) - caches:
                        layer._caches.pop(key)
        return restore

    def merge_and_unload(self) -> nn.Module:
        """peft's ``merge_and_unload``: the backbone with plain layers computing
        ``W + s*B@A`` (DoRA: its merged weight); the adapter is gone afterwards."""
        plain = self.tuner.merge_and_unload()
        plain.__dict__.pop('peft_adapter', None)
        return plain

    def unload(self) -> nn.Module:
        """peft's ``unload``: the base layers back in place, the adapters dropped unmerged."""
        plain = self.tuner.unload()
        plain.__dict__.pop('peft_adapter', None)
        return plain


def _refresh_dora_magnitude(layer) -> None:
    """DoRA's magnitude ``||W + s*B@A||`` (per output row) from the current weights, in place
    (the optimizer already holds the parameter)."""
    magnitude = layer.lora_magnitude_vector[ADAPTER_NAME]
    lora_weight = layer.lora_B[ADAPTER_NAME].weight @ layer.lora_A[ADAPTER_NAME].weight
    norm = magnitude.get_weight_norm(layer.get_base_layer().weight, lora_weight,
                                     layer.scaling[ADAPTER_NAME])
    magnitude.weight.data.copy_(norm.to(magnitude.weight.dtype))


def _frozen_by_rule(name: str, config) -> bool:
    if any(k in name for k in ALWAYS_FROZEN_KEYWORDS):
        return True
    layers = getattr(config, 'layers_to_transform', None)
    pattern = getattr(config, 'layers_pattern', None)
    if layers is None or not pattern:
        return False
    layers = [layers] if isinstance(layers, int) else list(layers)
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    for p in patterns:
        idx = block_index(name, p)
        if idx is not None:
            return idx not in layers
    return False


def apply_peft_adapter(backbone: nn.Module, peft_cfg: dict) -> PeftTuner:
    """Inject the ``peft`` adapter of ``peft_cfg`` into ``backbone`` (in place); return the
    :class:`PeftTuner`, also set as ``backbone.peft_adapter``.

    Inits that read the base weight run cheaply now (peft's default for ``pissa``/``olora``,
    MiCA on the current weights) and properly in :meth:`PeftTuner.init_after_weights`.
    """
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING  # peft: optional dependency
    config = build_peft_config(peft_cfg, backbone)
    tuner_cls = PEFT_TYPE_TO_TUNER_MAPPING.get(config.peft_type)
    if tuner_cls is None or getattr(tuner_cls, 'uses_shared_state', False):
        raise ValueError(f'peft_cfg: {type(config).__name__} cannot be injected into a '
                         f'backbone (peft has no stand-alone tuner for it)')
    init = getattr(config, 'init_lora_weights', True)
    kind = weight_init_kind(init)
    inject_config = config
    if kind in ('pissa', 'olora'):  # no SVD/QR of the random weights: redone after loading
        inject_config = dataclasses.replace(config, init_lora_weights=True)
    try:
        tuner = tuner_cls(backbone, inject_config, adapter_name=ADAPTER_NAME)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ValueError(f'peft_cfg ({type(config).__name__}) on {type(backbone).__name__}: '
                         f'{_first_line(exc)}') from None
    tuner.peft_config[ADAPTER_NAME] = config  # what was asked (e.g. 'pissa'), for peft's tools
    needs_weights = kind is not None or bool(getattr(config, 'use_dora', False))
    for layer in tuner_layers(backbone).values():
        layer._soma_peft_needs_weights = needs_weights
        setattr(layer, _PENDING, needs_weights)
        layer.register_state_dict_post_hook(_plain_keys_on_save)
        layer.register_load_state_dict_pre_hook(_plain_keys_on_load)
    trainable = [n for n, p in backbone.named_parameters()
                 if p.requires_grad and not _frozen_by_rule(n, config)]
    adapter = PeftTuner(config, tuner, trainable)
    backbone.peft_adapter = adapter
    adapter.freeze()
    return adapter
