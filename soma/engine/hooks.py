"""Hooks: weight-decay logging, loading a converted backbone, SoMA checkpoint metadata."""
import os

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from soma.registry import register_hook

__all__ = ['WeightDecayLoggingHook', 'LoadBackboneHook', 'SoMAMetaHook', 'unwrap_model']


def unwrap_model(model):
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

    def current_weight_decays(self, runner):
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

    def before_train_iter(self, runner, batch_idx, data_batch=None):
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

    Runs in ``before_run``: before weight initialisation (the loaded backbone is then marked
    initialised, so ``init_weights`` keeps it) and before ``load_from``/``resume`` (a
    checkpoint of the whole model, or a resumed run, wins over it). With a SoMA backbone the
    weights go into ``backbone.model`` and the adapters are SVD-initialised on them right
    away (residual semantics). For an adapter-only checkpoint with the release's semantics
    use ``tools/test.py --backbone`` (it merges them knowing the semantics) instead.

    Args:
        checkpoint_path: the converted backbone (``.pth`` or ``.safetensors``); keys are plain
            DINOv2 keys, optionally prefixed ``backbone.`` / ``backbone.model.``.
        strict: raise when backbone weights are missing from the file or shapes differ.
    """

    priority = 'VERY_HIGH'

    def __init__(self, checkpoint_path, strict=True):
        self.checkpoint_path = os.fspath(checkpoint_path)
        self.strict = strict

    def before_run(self, runner):
        load_backbone_weights(unwrap_model(runner.model), self.checkpoint_path, self.strict,
                              logger=runner.logger)


def _strip_backbone_prefix(state_dict):
    out = {}
    for key, value in state_dict.items():
        for prefix in ('module.', 'backbone.', 'model.'):
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def load_backbone_weights(model, checkpoint_path, strict=True, logger=None):
    """Load a converted backbone checkpoint into ``model.backbone`` (its ``.model`` for SoMA).

    Raises ``FileNotFoundError``/``CheckpointError``/``ValueError`` with one line naming the
    file and the first offending key.
    """
    from soma.utils.checkpoint_io import get_state_dict, load_checkpoint_file
    from soma.utils.checkpoint_io import CheckpointError
    backbone = model.backbone
    target = getattr(backbone, 'model', backbone) if _is_soma(backbone) else backbone
    state = _strip_backbone_prefix(get_state_dict(load_checkpoint_file(checkpoint_path)))
    own = target.state_dict()
    plain_own = {k for k in own if 'lora_' not in k}
    common = plain_own & set(state)
    if not common:
        raise CheckpointError(
            f'{checkpoint_path}: no key fits the backbone {type(target).__name__} '
            f'(e.g. file key {next(iter(state), None)!r}, backbone key {next(iter(own), None)!r})')
    for key in sorted(common):
        if tuple(state[key].shape) != tuple(own[key].shape):
            raise CheckpointError(
                f'{checkpoint_path}: {key} has shape {tuple(state[key].shape)}, the backbone '
                f'expects {tuple(own[key].shape)} (another architecture or input size?)')
    missing = sorted(plain_own - set(state))
    if strict and missing:
        raise CheckpointError(f'{checkpoint_path}: {len(missing)} backbone weights are missing, '
                              f'e.g. {missing[0]}')
    target.load_state_dict({k: state[k] for k in common}, strict=False)
    if hasattr(target, 'is_init'):
        target.is_init = True  # mmengine's flag: init_weights() must not overwrite these weights
    if logger is not None:
        logger.info(f'LoadBackboneHook: loaded {len(common)} backbone tensors from '
                    f'{checkpoint_path}')
    return sorted(common)


def _is_soma(backbone):
    try:
        from soma.peft import SoMAModel
    except ImportError:
        return False
    return isinstance(backbone, SoMAModel)


@register_hook
class SoMAMetaHook(Hook):
    """Record the adapter semantics in every checkpoint: ``checkpoint['meta']['soma']``."""

    priority = 'VERY_LOW'

    def before_save_checkpoint(self, runner, checkpoint):
        backbone = getattr(unwrap_model(runner.model), 'backbone', None)
        if backbone is None or not _is_soma(backbone):
            return
        from soma.peft.config import META_KEY
        checkpoint.setdefault('meta', {})[META_KEY] = backbone.checkpoint_meta()
