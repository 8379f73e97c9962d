"""Putting SoMA adapters into any ``nn.Module`` by module-name rules; freezing; reports.

Which layers (SPEC 3): an ``nn.Linear`` whose module name ends with one of
``target_modules`` (dotted: ``name == t`` or ``name.endswith('.' + t)``), or matches it in full
when ``target_modules`` is one regex string, and which lies in a block ``<layers_pattern>.<i>.``
with ``i >= start_lora_idx`` (DINOv2: ``blocks.8.attn.q``; HF ``Dinov2Model``: set
``layers_pattern='layer'`` for ``encoder.layer.8.attention.attention.query``).
With ``layers_pattern=None`` there are no blocks: every matching linear is adapted with rank r,
and ``start_lora_idx`` / ``rank_ramp`` do not apply (e.g. a plain ``nn.Sequential``).

Trainable after :meth:`SoMAModel.freeze` (re-applied by every ``train()`` call): every
parameter whose name contains ``lora``, the ``mask_token``, the biases selected by ``bias``
(``'all'``: of the target modules in adapted blocks; ``'lora_only'``: of the adapted layers) and
the parameters of ``modules_to_save``. Always frozen: names containing one of
``ALWAYS_FROZEN_KEYWORDS``, and everything in blocks before ``start_lora_idx``.
"""
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Optional, Union

import torch
from torch import nn

from .config import (ADAPTER_KEYWORD, ALWAYS_FROZEN_KEYWORDS, DEFAULT_LAYERS_PATTERN,
                     SEMANTICS_RELEASE,
                     SEMANTICS_RESIDUAL, TRAINABLE_TOKEN_KEYWORDS, WRAPPED_MODEL_ATTR,
                     SoMAConfig)
from .layer import SoMALinear

__all__ = ['SoMAModel', 'SoraModel', 'apply_soma', 'block_index', 'is_target_name',
           'adapted_layers', 'init_pending_adapters', 'parameter_report']

logger = logging.getLogger(__name__)


def _as_config(config: Union[SoMAConfig, dict]) -> SoMAConfig:
    return config if isinstance(config, SoMAConfig) else SoMAConfig.from_dict(config)


def block_index(name: str, layers_pattern: Optional[str] = DEFAULT_LAYERS_PATTERN
                ) -> Optional[int]:
    """Block index i of a name inside ``<layers_pattern>.<i>.``, else None."""
    if layers_pattern is None:
        return None
    match = re.search(rf'(?:^|\.)(?:{layers_pattern})\.(\d+)\.', name)
    return int(match.group(1)) if match else None


def is_target_name(name: str, target_modules) -> bool:
    """Name rule of ``target_modules``: one regex (full match) or dotted name suffixes."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == t or name.endswith('.' + t) for t in target_modules)


def _in_adapted_block(name: str, config: SoMAConfig):
    """(adapted?, block index) for a module or parameter name."""
    if config.layers_pattern is None:
        return True, None
    idx = block_index(name, config.layers_pattern)
    return idx is not None and idx >= config.start_lora_idx, idx


def adapted_layers(module: nn.Module) -> Dict[str, SoMALinear]:
    """Every ``SoMALinear`` in ``module``, by module name."""
    return {n: m for n, m in module.named_modules() if isinstance(m, SoMALinear)}


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition('.')
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _find_targets(module: nn.Module, config: SoMAConfig):
    """[(name, linear, block index)] of the layers to adapt; clear errors when none."""
    # never the adapters' own lora_A / lora_B linears
    names = [n for n, _ in module.named_modules()
             if n and not any(p.startswith(ADAPTER_KEYWORD) for p in n.split('.'))]
    matched = [n for n in names if is_target_name(n, config.target_modules)]
    kind = type(module).__name__
    if not matched:
        linears = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)][:6]
        raise ValueError(f'SoMA: target_modules {config.target_modules!r} match no module of '
                         f'{kind}; its linear layers are named like {linears}')
    if config.layers_pattern is not None and all(
            block_index(n, config.layers_pattern) is None for n in matched):
        raise ValueError(
            f'SoMA: no target module of {kind} lies in a block "{config.layers_pattern}.<i>." '
            f'(e.g. {matched[:3]}); set layers_pattern to its block container name (HF: '
            f"'layer') or layers_pattern=None to adapt every matching linear")
    targets = []
    for name in matched:
        layer = module.get_submodule(name)
        adapted, idx = _in_adapted_block(name, config)
        if not adapted or not isinstance(layer, nn.Linear):
            continue
        if isinstance(layer, SoMALinear):
            raise ValueError(f'SoMA: {name} already has SoMA adapters (apply_soma twice?)')
        targets.append((name, layer, idx))
    if not targets:
        raise ValueError(
            f'SoMA: target_modules {config.target_modules!r} match {len(matched)} module(s) of '
            f'{kind} but no nn.Linear in blocks >= start_lora_idx={config.start_lora_idx} '
            f'(e.g. {matched[:3]})')
    if config.fan_in_fan_out:
        raise ValueError(f'SoMA: fan_in_fan_out=True, but {targets[0][0]} is an nn.Linear '
                         f'(weight stored out x in); set fan_in_fan_out=False')
    return targets


def apply_soma(module: nn.Module, config: Union[SoMAConfig, dict],
               init_adapters: bool = True) -> nn.Module:
    """Replace the target linears of ``module`` (in place) by ``SoMALinear``; return ``module``.

    ``init_adapters=True`` runs the SVD of the current weights now; otherwise call
    :func:`init_pending_adapters` (or ``SoMAModel.init_adapters``) after loading weights, or
    load a state dict (a plain weight triggers the SVD of the loaded weight).
    """
    config = _as_config(config)
    for name, linear, idx in _find_targets(module, config):
        rank = config.rank_for_block(idx)
        if rank > min(linear.in_features, linear.out_features):
            raise ValueError(
                f'SoMA: rank {rank} (r={config.r}, rank_ramp={config.rank_ramp}, block {idx}) '
                f'exceeds min(out, in) = {min(linear.in_features, linear.out_features)} of '
                f'{name} (weight {linear.out_features}x{linear.in_features})')
        new = SoMALinear.from_linear(
            linear, r=rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            first_eigen=config.first_eigen, lora_weight_init=config.lora_weight_init,
            merge_weights=config.merge_weights, svd_init_on=config.svd_init_on, name=name)
        _set_submodule(module, name, new)
    if init_adapters:
        init_pending_adapters(module)
    return module


def init_pending_adapters(module: nn.Module, num_workers: int = 1) -> int:
    """Run the SVD of every ``SoMALinear`` of ``module`` not initialised yet; return the count.

    Every layer's SVD already uses all cores through multi-threaded BLAS/LAPACK (and the GPU
    when the weights are on CUDA). ``num_workers > 1`` also spreads layers over a thread pool,
    which pays only where the solver releases the GIL (torch ops, CUDA); scipy's CPU
    eigensolver holds it, so on CPU the default 1 is as fast (``docs/benchmarks.md``). Each
    layer's result does not depend on the others (fixed seed per layer).
    """
    pending = [(n, m) for n, m in adapted_layers(module).items() if not m.lora_initialized]
    if not pending:
        return 0
    start = time.perf_counter()
    if num_workers > 1 and len(pending) > 1:
        with ThreadPoolExecutor(max_workers=num_workers) as pool:
            list(pool.map(lambda item: item[1].init_adapter(), pending))
    else:
        for _, layer in pending:
            layer.init_adapter()
    first = pending[0][1]
    components = ('random' if first.random_components
                  else 'principal' if first.first_eigen else 'minor')
    logger.info('SoMA: initialised %d layer(s) from the SVD of their weights (%s, %s '
                'components) in %.1f s', len(pending), first.lora_weight_init, components,
                time.perf_counter() - start)
    return len(pending)


def parameter_report(module: nn.Module, layers_pattern, title: str) -> dict:
    """Trainable/total parameter counts per block and overall, and a printable table.

    Returns ``dict(per_block={i: (trainable, total)}, non_block=(trainable, total),
    trainable=int, total=int, table=str)``.
    """
    per_block, non_block = {}, [0, 0]
    for name, param in module.named_parameters():
        idx = block_index(name, layers_pattern)
        slot = non_block if idx is None else per_block.setdefault(idx, [0, 0])
        slot[1] += param.numel()
        if param.requires_grad:
            slot[0] += param.numel()
    trainable = sum(t for t, _ in per_block.values()) + non_block[0]
    total = sum(n for _, n in per_block.values()) + non_block[1]
    lines = [title, f'{"block":>8} {"trainable":>12} {"total":>14}']
    for idx in sorted(per_block):
        lines.append(f'{idx:>8} {per_block[idx][0]:>12,} {per_block[idx][1]:>14,}')
    lines.append(f'{"other":>8} {non_block[0]:>12,} {non_block[1]:>14,}')
    share = 100.0 * trainable / total if total else 0.0
    lines.append(f'{"total":>8} {trainable:>12,} {total:>14,}  ({share:.2f}% trainable)')
    return dict(per_block={i: tuple(v) for i, v in sorted(per_block.items())},
                non_block=tuple(non_block), trainable=trainable, total=total,
                table='\n'.join(lines))


class SoMAModel(nn.Module):
    """A model whose target linears carry SoMA adapters; holds it as ``.model``.

    Args:
        config: :class:`SoMAConfig` or its dict (``lora_cfg``).
        model: any ``nn.Module``; adapted in place.
        init_adapters: run the SVD now (True), or later with :meth:`init_adapters` /
            by loading a plain state dict (False: the segmentors load pretrained weights first).
    """

    def __init__(self, config: Union[SoMAConfig, dict], model: nn.Module,
                 init_adapters: bool = True):
        super().__init__()
        self.peft_config = _as_config(config)
        setattr(self, WRAPPED_MODEL_ATTR, model)
        apply_soma(model, self.peft_config, init_adapters=False)
        if init_adapters:
            self.init_adapters()
        self.freeze()
        logger.info('%s', self.trainable_parameter_report()['table'])

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if (name == WRAPPED_MODEL_ATTR or name.startswith('__')
                    or '_modules' not in self.__dict__):
                raise
            return getattr(getattr(self, WRAPPED_MODEL_ATTR), name)

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    @property
    def semantics(self) -> str:
        """What a stored ``weight`` means: 'residual' (W_res) or 'release' (W_pretrained).

        Derived from ``svd_init_on`` until set: a model that loads a checkpoint carrying its
        adapted weights takes that checkpoint's semantics (``SoMAMetaHook``), e.g. 'release'
        when fine-tuning from a merged released model, whose weights are W_pretrained.
        """
        semantics = self.__dict__.get('_semantics')
        if semantics is not None:
            return semantics
        return (SEMANTICS_RELEASE if self.peft_config.svd_init_on == 'construction'
                else SEMANTICS_RESIDUAL)

    @semantics.setter
    def semantics(self, value: Optional[str]) -> None:
        """Set 'release' or 'residual'; ``None`` goes back to the ``svd_init_on`` default."""
        if value not in (None, SEMANTICS_RELEASE, SEMANTICS_RESIDUAL):
            raise ValueError(f'SoMAModel.semantics must be {SEMANTICS_RELEASE!r} or '
                             f'{SEMANTICS_RESIDUAL!r}, got {value!r}')
        self.__dict__['_semantics'] = value

    def adapted_layers(self) -> Dict[str, SoMALinear]:
        """The ``SoMALinear`` layers by name (relative to ``.model``)."""
        return adapted_layers(self.model)

    def init_adapters(self, num_workers: int = 1) -> int:
        """SVD of the current weights for layers not initialised yet (never twice)."""
        return init_pending_adapters(self.model, num_workers=num_workers)

    # ------------------------------------------------------------------ freezing
    def _trainable_bias_modules(self):
        config = self.peft_config
        if config.bias == 'none':
            return set()
        if config.bias == 'lora_only':
            return set(self.adapted_layers())
        return {n for n, _ in self.model.named_modules()
                if n and is_target_name(n, config.target_modules)
                and _in_adapted_block(n, config)[0]}

    def is_trainable(self, param_name: str, bias_modules=None) -> bool:
        """The freezing rule for one parameter name (relative to ``.model``)."""
        config = self.peft_config
        if any(k in param_name for k in ALWAYS_FROZEN_KEYWORDS):
            return False
        idx = block_index(param_name, config.layers_pattern)
        if idx is not None and idx < config.start_lora_idx:
            return False
        if ADAPTER_KEYWORD in param_name:
            return True
        if any(k in param_name for k in TRAINABLE_TOKEN_KEYWORDS):
            return True
        module_name = param_name.rpartition('.')[0]
        if bias_modules is None:
            bias_modules = self._trainable_bias_modules()
        if param_name.endswith('.bias') and module_name in bias_modules:
            return True
        # modules_to_save: the named module (name or dotted suffix) and everything inside it
        return any(f'.{m}.' in f'.{module_name}.' for m in (config.modules_to_save or ()))

    def freeze(self) -> None:
        """Apply the trainable/frozen rules (module docstring) to every parameter."""
        bias_modules = self._trainable_bias_modules()
        for name, param in self.model.named_parameters():
            param.requires_grad_(self.is_trainable(name, bias_modules))

    def train(self, mode: bool = True):
        super().train(mode)
        self.freeze()
        return self

    # ------------------------------------------------------------------ reporting
    def trainable_parameter_report(self) -> dict:
        """Trainable/total parameter counts per block and overall, plus a printable table.

        Returns ``dict(per_block={i: (trainable, total)}, non_block=(trainable, total),
        trainable=int, total=int, table=str)``.
        """
        config = self.peft_config
        title = (f'SoMA trainable parameters: {len(self.adapted_layers())} adapted layers, '
                 f'r={config.r}, rank_ramp={config.rank_ramp}, '
                 f'start_lora_idx={config.start_lora_idx}, bias={config.bias!r}')
        return parameter_report(self.model, config.layers_pattern, title)

    def checkpoint_meta(self) -> dict:
        """To store under ``checkpoint['meta'][META_KEY]``: semantics and the adapter config."""
        return dict(semantics=self.semantics, lora_cfg=self.peft_config.to_dict())

    @torch.no_grad()
    def merge_and_unload(self) -> nn.Module:
        """Replace every ``SoMALinear`` by a plain ``nn.Linear`` (W_res + s*B@A); return
        the inner model (no extra inference cost)."""
        for name, layer in self.adapted_layers().items():
            _set_submodule(self.model, name, layer.to_linear())
        return self.model

    def unload(self) -> nn.Module:
        """Replace every ``SoMALinear`` by a plain ``nn.Linear`` holding its stored weight
        (W_res for this project's semantics; the adapters dropped, not merged); return the
        inner model."""
        for name, layer in self.adapted_layers().items():
            _set_submodule(self.model, name, layer.to_linear(with_adapter=False))
        return self.model


SoraModel = SoMAModel
