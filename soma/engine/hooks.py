"""Hooks: weight-decay logging, loading a converted backbone, adapter checkpoint metadata."""
import os
from typing import Dict, List, Optional, Tuple

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner
from torch import nn

from soma.checkpoints import (adapter_contents, complete_checkpoint, load_backbone_weights,
                              rename_legacy_codetr_checkpoint)
from soma.models.adapters.base import BackboneAdapter
from soma.models.peft_backbone import adapter_of
from soma.registry import register_hook

__all__ = ['WeightDecayLoggingHook', 'LoadBackboneHook', 'SoMAMetaHook', 'LegacyKeysHook',
           'unwrap_model']


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a DDP/FSDP wrapper (or the model itself)."""
    return model.module if is_model_wrapper(model) else model


def _optimizers(optim_wrapper):
    """``(name, optimizer)`` pairs of an OptimWrapper or OptimWrapperDict."""
    if hasattr(optim_wrapper, 'optimizer'):
        return [('', optim_wrapper.optimizer)]
    return [(f'{k}/', w.optimizer) for k, w in optim_wrapper.items()]


def _wd_key(initial):
    return f'{initial:.6g}'


@register_hook
class WeightDecayLoggingHook(Hook):
    """Log the current weight decay of each distinct parameter group every ``interval`` iters.

    Groups are told apart by their initial decay (``initial_weight_decay`` set by the
    scheduler, else their current value): message-hub scalars
    ``train/weight_decay/init_<initial>`` (the LoggerHook writes them to the text and json
    logs and to the visualizer backends, e.g. TensorBoard), plus ``train/weight_decay`` for
    the group with the largest initial decay.
    """

    priority = 'BELOW_NORMAL'

    def __init__(self, interval=50):
        if int(interval) < 1:
            raise ValueError(f'WeightDecayLoggingHook: interval must be >= 1, got {interval}')
        self.interval = int(interval)

    def current_weight_decays(self, runner: Runner) -> Dict[str, Tuple[float, float]]:
        """``{key: current weight decay}`` of the distinct groups."""
        values = {}
        for prefix, optimizer in _optimizers(runner.optim_wrapper):
            for group in optimizer.param_groups:
                if 'weight_decay' not in group:
                    continue
                initial = group.get('initial_weight_decay', group['weight_decay'])
                values.setdefault(f'{prefix}init_{_wd_key(initial)}',
                                  (initial, float(group['weight_decay'])))
        return values

    def before_train_iter(self, runner: Runner, batch_idx: int, data_batch: Optional[dict] = None
                          ) -> None:
        """Log the decays at the first, every ``interval``-th and the last iteration."""
        if not (runner.iter == 0 or self.every_n_train_iters(runner, self.interval)
                or self.is_last_train_iter(runner)):
            return
        values = self.current_weight_decays(runner)
        if not values:
            return
        for key, (_, value) in values.items():
            runner.message_hub.update_scalar(f'train/weight_decay/{key}', value)
        main = max(values.values(), key=lambda iv: iv[0])
        runner.message_hub.update_scalar('train/weight_decay', main[1])


@register_hook
class LoadBackboneHook(Hook):
    """Load converted backbone weights (e.g. ``dinov2_sora_converted.pth``) into the backbone.

    Two moments, one meaning (the release's: the converted backbone completes a checkpoint):

    * ``before_run``: the weights go into the backbone (under its adapter, whose inits then
      run on them: SoMA's SVD gives 'residual' semantics, peft's PiSSA/OLoRA their residual),
      before weight initialisation (the backbone is marked initialised, so ``init_weights``
      keeps it). This is what a run that loads no checkpoint trains from.
    * ``after_load_checkpoint`` (``load_from`` / ``resume``; mmengine calls it before the
      state dict goes into the model): the converted keys the checkpoint lacks are put into
      it (and into its ``ema_state_dict``), so ``load_from=<adapter-only checkpoint>`` works
      as in the release. Keys already in the checkpoint win. The adapter's semantics are
      honoured as the merge tool honours them
      (:func:`soma.checkpoints.complete_checkpoint`), on the model's device. The loaded
      checkpoint then replaces everything ``before_run`` put in, so a released adapter never
      sits on W_res.

    Args:
        checkpoint_path: the converted backbone (``.pth`` / ``.safetensors``: plain DINOv2
            keys, optionally prefixed ``backbone.`` / ``backbone.model.``; a transformers
            folder for an HFVisionBackbone; :mod:`soma.checkpoints.backbone`).
        strict: raise when backbone weights are missing from the file or shapes differ.
        check_fingerprint: refuse completing an adapter checkpoint that records another
            backbone (:mod:`soma.checkpoints.fingerprint`).
    """

    priority = 'VERY_HIGH'  # before EMAHook (NORMAL) loads the checkpoint into its copy

    def __init__(self, checkpoint_path, strict: bool = True, check_fingerprint: bool = True):
        self.checkpoint_path = os.fspath(checkpoint_path)
        self.strict = strict
        self.check_fingerprint = check_fingerprint

    def before_run(self, runner: Runner) -> None:
        """Load the converted backbone into the model's backbone."""
        loaded = load_backbone_weights(unwrap_model(runner.model), self.checkpoint_path,
                                       self.strict)
        runner.logger.info(f'LoadBackboneHook: loaded {len(loaded)} backbone tensors from '
                           f'{self.checkpoint_path}')

    def after_load_checkpoint(self, runner: Runner, checkpoint: dict) -> None:
        """Complete the loaded checkpoint with the converted backbone (in place)."""
        added = complete_checkpoint(unwrap_model(runner.model), checkpoint,
                                    self.checkpoint_path, self.strict, self.check_fingerprint)
        if added:
            runner.logger.info(f'LoadBackboneHook: added {len(added)} backbone tensors from '
                               f'{self.checkpoint_path} to the loaded checkpoint')


def _adapters(runner) -> List[BackboneAdapter]:
    """The backbone adapter of the runner's model and those of its EMA copies (``EMAHook``)."""
    models = [unwrap_model(runner.model)]
    for hook in runner.hooks:
        ema = getattr(hook, 'ema_model', None)
        if ema is not None:
            models.append(unwrap_model(getattr(ema, 'module', ema)))
    adapters = [adapter_of(m.backbone) for m in models if hasattr(m, 'backbone')]
    return [a for a in adapters if a is not None]


@register_hook
class LegacyKeysHook(Hook):
    """Rename the release's legacy Co-DETR keys of a checkpoint loaded by the runner.

    ``load_from``/``resume`` of a released detector checkpoint (``soma_dinov2-L_dgod_best.pth``
    or any checkpoint of the release's Co-DETR) go through mmengine's loader, not through
    :func:`soma.checkpoints.load_soma_checkpoint_file`: this hook applies the same rules
    (:mod:`soma.checkpoints.legacy_codetr`) in ``after_load_checkpoint``, in place and before
    every other hook (EMAHook, LoadBackboneHook) reads the checkpoint. A no-op on our layout.
    """

    priority = 'HIGHEST'

    def after_load_checkpoint(self, runner: Runner, checkpoint: dict) -> None:
        """Rename the release's Co-DETR keys of ``checkpoint`` in place."""
        renamed = rename_legacy_codetr_checkpoint(checkpoint, 'the loaded checkpoint')
        if renamed is not checkpoint:
            checkpoint.update(renamed)


@register_hook
class SoMAMetaHook(Hook):
    """Adapter metadata of checkpoints, both ways, for whatever adapter the backbone has.

    * ``before_save_checkpoint``: ``checkpoint['meta'][adapter.meta_key]`` = the adapter's
      ``checkpoint_meta()``: ``meta['soma']`` (semantics and adapter config) for SoMA,
      ``meta['peft']`` (the resolved peft config, start block, base-weight semantics, trained
      keys) for a ``peft_cfg`` backbone, so the extract/merge/fold tools rebuild the adapter
      from the file alone.
    * ``after_load_checkpoint`` (``load_from`` / ``resume``, before the state dict goes into
      the model): when the checkpoint holds the backbone's adapter keys, the adapters of the
      model and of its EMA copies adopt what its meta says
      (:meth:`~soma.models.adapters.base.BackboneAdapter.adopt_checkpoint`): a SoMA model
      takes the semantics of a checkpoint carrying the adapted weights (fine-tuning from a
      merged released model keeps writing 'release') and refuses an adapter-only checkpoint
      of other semantics (a released adapter would compute W_res + s*B@A: merge it first, or
      add ``LoadBackboneHook``, which runs earlier and completes it).
    """

    priority = 'VERY_LOW'

    def before_save_checkpoint(self, runner: Runner, checkpoint: dict) -> None:
        """Record the adapter's ``checkpoint_meta()`` under its meta key."""
        backbone = getattr(unwrap_model(runner.model), 'backbone', None)
        adapter = adapter_of(backbone) if backbone is not None else None
        if adapter is not None:
            checkpoint.setdefault('meta', {})[adapter.meta_key] = adapter.checkpoint_meta()

    def after_load_checkpoint(self, runner: Runner, checkpoint: dict) -> None:
        """Let the adapters adopt (or refuse) the loaded checkpoint's meta."""
        adapters = _adapters(runner)
        if not adapters:
            return
        has_adapters, has_weights = adapter_contents(checkpoint, adapters[0])
        if not has_adapters:
            return
        meta = checkpoint.get('meta') if isinstance(checkpoint.get('meta'), dict) else {}
        for adapter in adapters:
            message = adapter.adopt_checkpoint(meta.get(adapter.meta_key), has_weights)
        if message:
            runner.logger.info(f'SoMAMetaHook: {message}')
