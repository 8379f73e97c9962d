"""Validate and test with the adapters merged into the weights, training untouched.

While merged, every ``SoMALinear`` computes ``x (W_res + s B A)^T + b``: one matmul instead
of three (the merged/plain inference speed of ``tools/benchmark.py``). Unmerging by
subtraction (``SoMALinear.unmerge``) gives ``W_res`` back only up to rounding, which would
make a run with validations drift from one without; so the hook keeps a copy of each
residual weight and copies it back afterwards: training continues bit for bit as if no
validation had merged anything. The copy costs the adapted layers' weight memory once
(ViT-L, 96 layers: ~0.8 GB float32) for the duration of the loop.

The layers of a ``peft`` adapter (``peft_cfg``: LoRA, DoRA, PiSSA, MiCA, ...; any peft tuner
layer with ``merge()``) are merged the same way: peft's own ``merge()``, then the base
layer's parameters (weight, and the bias ``lora_bias`` changes) copied back, the layer
marked unmerged and the caches its merge added (DoRA's weight norm) dropped.
"""
from typing import Optional, Sequence

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.runner import Runner
from torch import nn

from soma.engine.hooks import unwrap_model
from soma.models.peft_backbone import adapter_of
from soma.registry import register_hook

__all__ = ['MergeAdaptersHook']


@register_hook
class MergeAdaptersHook(Hook):
    """Merge the adapters for the validation / test loop, restore the exact weights after.

    ``custom_hooks = [dict(type='MergeAdaptersHook')]``. Every adapted backbone in the model
    (found through the adapter interface, :func:`soma.models.peft_backbone.adapter_of`) is
    merged by its adapter's ``merge_in_place``; layers already merged (e.g. with
    ``merge_weights=True`` in eval mode) are left alone.

    Order with ``EMAHook`` (priority NORMAL), which copies the EMA weights into the model in
    ``before_*_epoch`` and back in ``after_*_epoch``: this hook merges after that copy
    (priority LOW, so the EMA weights are the ones merged) and restores after the loop's last
    iteration, i.e. before the EMA weights are copied back and before any ``after_*_epoch``
    hook (the best-checkpoint save of ``CheckpointHook``) sees the model.

    Args:
        on_val: merge during the validation loop.
        on_test: merge during the test loop.
    """

    priority = 'LOW'

    def __init__(self, on_val: bool = True, on_test: bool = True):
        self.on_val = bool(on_val)
        self.on_test = bool(on_test)
        self._restore = []

    def merge(self, model: nn.Module) -> int:
        """Merge the adapters of every adapted backbone of ``model``, keeping the weights they
        change; the number of adapted layers."""
        if self._restore:
            raise RuntimeError('MergeAdaptersHook: adapters are already merged (restore first)')
        adapters = [a for a in map(adapter_of, unwrap_model(model).modules()) if a is not None]
        for adapter in adapters:
            self._restore.append(adapter.merge_in_place())
        return sum(len(a.adapted_layers()) for a in adapters)

    def restore(self) -> None:
        """Put back the weights kept by :meth:`merge` (bit-exact) and mark them unmerged."""
        for restore in self._restore:
            restore()
        self._restore = []

    def _before(self, runner: Runner, loop: str, dataloader) -> None:
        if len(dataloader) == 0:
            return
        count = self.merge(runner.model)
        print_log(f'MergeAdaptersHook: {count} adapted layers merged for the {loop} loop',
                  logger='current')

    def _restore_after_last(self, dataloader, batch_idx):
        if self._restore and batch_idx == len(dataloader) - 1:
            self.restore()

    def before_val_epoch(self, runner: Runner) -> None:
        """Merge before the validation loop (``on_val``)."""
        if self.on_val:
            self._before(runner, 'val', runner.val_loop.dataloader)

    def after_val_iter(self, runner: Runner, batch_idx: int, data_batch: Optional[dict] = None,
                       outputs: Optional[Sequence] = None) -> None:
        """Restore after the last validation iteration."""
        self._restore_after_last(runner.val_loop.dataloader, batch_idx)

    def after_val_epoch(self, runner: Runner, metrics: Optional[dict] = None) -> None:
        """Restore (a no-op unless the loop ended early)."""
        self.restore()  # a no-op unless the loop ended early

    def before_test_epoch(self, runner: Runner) -> None:
        """Merge before the test loop (``on_test``)."""
        if self.on_test:
            self._before(runner, 'test', runner.test_loop.dataloader)

    def after_test_iter(self, runner: Runner, batch_idx: int, data_batch: Optional[dict] = None,
                        outputs: Optional[Sequence] = None) -> None:
        """Restore after the last test iteration."""
        self._restore_after_last(runner.test_loop.dataloader, batch_idx)

    def after_test_epoch(self, runner: Runner, metrics: Optional[dict] = None) -> None:
        """Restore (a no-op unless the loop ended early)."""
        self.restore()
