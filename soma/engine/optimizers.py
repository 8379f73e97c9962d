"""Optimizer wrapper constructor that sees only the trainable parameters."""
import inspect
import logging
from collections import OrderedDict
from typing import List

from mmengine.logging import MMLogger, print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPERS, OPTIMIZERS
from torch import nn

from soma.registry import register_optim_wrapper_constructor

__all__ = ['PEFTOptimWrapperConstructor']


class _DropFrozenSkipMessages(logging.Filter):
    """Hide mmengine's one-warning-per-frozen-parameter lines (a ViT-L has hundreds)."""

    def filter(self, record):
        return 'is skipped since its requires_grad=False' not in record.getMessage()


@register_optim_wrapper_constructor
class PEFTOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``DefaultOptimWrapperConstructor`` over the parameters with ``requires_grad`` only.

    The paramwise rules (``custom_keys``, ``norm_decay_mult``, ``bias_decay_mult``, ...) are
    mmengine's own, applied to the trainable parameters; frozen parameters never reach the
    optimizer (whatever the mmengine version). Without ``paramwise_cfg`` all trainable
    parameters form one group, as with the default constructor. The trainable parameter
    count, in total and per distinct (lr, weight decay, ...) setting, is logged.
    """

    def __call__(self, model):
        if hasattr(model, 'module'):
            model = model.module
        logger = MMLogger.get_current_instance()
        params = []
        quiet = _DropFrozenSkipMessages()
        logger.addFilter(quiet)
        try:
            self.add_params(params, model)
        finally:
            logger.removeFilter(quiet)
        params = [g for g in params if all(p.requires_grad for p in g['params'])]
        if not params:
            raise ValueError(f'{type(model).__name__} has no trainable parameter: nothing to '
                             f'optimise (check the freezing rules / lora_cfg of the config)')
        if not self.paramwise_cfg:
            params = [{'params': [p for g in params for p in g['params']]}]
        self.log_trainable(model, params)

        optimizer_cfg = self.optimizer_cfg.copy()
        optimizer_cls = optimizer_cfg['type']
        if isinstance(optimizer_cls, str):
            with OPTIMIZERS.switch_scope_and_registry(None) as registry:
                optimizer_cls = registry.get(optimizer_cfg['type'])
        first_arg_name = next(iter(inspect.signature(optimizer_cls).parameters))
        optimizer_cfg[first_arg_name] = params
        optimizer = OPTIMIZERS.build(optimizer_cfg)
        optim_wrapper_cfg = self.optim_wrapper_cfg.copy()
        optim_wrapper_cfg.setdefault('type', 'OptimWrapper')
        return OPTIM_WRAPPERS.build(optim_wrapper_cfg, default_args=dict(optimizer=optimizer))

    def log_trainable(self, model: nn.Module, params: List[dict]) -> dict:
        """Log trainable counts in total and per distinct group setting; return them."""
        names = {id(p): n for n, p in model.named_parameters()}
        total = sum(p.numel() for p in model.parameters())
        summary = OrderedDict()
        for group in params:
            setting = tuple(sorted((k, v) for k, v in group.items() if k != 'params'))
            entry = summary.setdefault(setting, dict(tensors=0, params=0, example=None))
            for p in group['params']:
                entry['tensors'] += 1
                entry['params'] += p.numel()
                entry['example'] = entry['example'] or names.get(id(p), '?')
        trainable = sum(e['params'] for e in summary.values())
        lines = [f'{type(self).__name__}: {len(params)} param groups, {trainable:,} trainable '
                 f'of {total:,} parameters ({100.0 * trainable / max(total, 1):.2f}%)']
        for setting, e in summary.items():
            desc = ' '.join(f'{k}={v:g}' if isinstance(v, float) else f'{k}={v}'
                            for k, v in setting) or 'optimizer defaults'
            lines.append(f'  {desc}: {e["tensors"]} tensors, {e["params"]:,} parameters '
                         f'(e.g. {e["example"]})')
        print_log('\n'.join(lines), logger='current')
        return dict(total=total, trainable=trainable, groups=summary)
