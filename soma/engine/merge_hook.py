"""Validate and test with the SoMA adapters merged into the weights, training untouched.

While merged, every ``SoMALinear`` computes ``x (W_res + s B A)^T + b``: one matmul instead
of three (the merged/plain inference speed of ``tools/benchmark.py``). Unmerging by
subtraction (``SoMALinear.unmerge``) gives ``W_res`` back only up to rounding, which would
make a run with validations drift from one without; so the hook keeps a copy of each
residual weight and copies it back afterwards: training continues bit for bit as if no
validation had merged anything. The copy costs the adapted layers' weight memory once
(ViT-L, 96 layers: ~0.8 GB float32) for the duration of the loop.
"""
import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log

from soma.engine.hooks import unwrap_model
from soma.peft.layer import SoMALinear
from soma.registry import register_hook

__all__ = ['MergeAdaptersHook']


@register_hook
class MergeAdaptersHook(Hook):
    """Merge the adapters for the validation / test loop, restore the exact weights after.

    ``custom_hooks = [dict(type='MergeAdaptersHook')]``. Layers already merged (e.g. with
    ``merge_weights=True`` in eval mode) are left alone. ``VERY_HIGH`` priority: the weights
    are restored in ``after_val_epoch`` before any other hook (e.g. the best-checkpoint save
    of ``CheckpointHook``) sees them.

    Args:
        on_val: merge during the validation loop.
        on_test: merge during the test loop.
    """

    priority = 'VERY_HIGH'

    def __init__(self, on_val=True, on_test=True):
        self.on_val = bool(on_val)
        self.on_test = bool(on_test)
        self._saved = []

    def merge(self, model):
        """Merge every unmerged ``SoMALinear`` of ``model``, keeping its weight; the count."""
        if self._saved:
            raise RuntimeError('MergeAdaptersHook: adapters are already merged (restore first)')
        layers = [m for m in unwrap_model(model).modules()
                  if isinstance(m, SoMALinear) and not m.merged]
        with torch.no_grad():
            for layer in layers:
                self._saved.append((layer, layer.weight.detach().clone()))
                layer.merge()
        return len(layers)

    def restore(self):
        """Put back the weights kept by :meth:`merge` (bit-exact) and mark them unmerged."""
        with torch.no_grad():
            for layer, weight in self._saved:
                layer.weight.copy_(weight)
                layer.merged = False
        self._saved = []

    def _before(self, runner, loop):
        count = self.merge(runner.model)
        print_log(f'MergeAdaptersHook: {count} SoMA layers merged for the {loop} loop',
                  logger='current')

    def before_val_epoch(self, runner):
        if self.on_val:
            self._before(runner, 'val')

    def after_val_epoch(self, runner, metrics=None):
        if self.on_val:
            self.restore()

    def before_test_epoch(self, runner):
        if self.on_test:
            self._before(runner, 'test')

    def after_test_epoch(self, runner, metrics=None):
        if self.on_test:
            self.restore()
