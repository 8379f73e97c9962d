"""Hooks: weight-decay logging, loading a converted backbone, SoMA checkpoint metadata."""
import os

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from soma.registry import register_hook

__all__ = ['WeightDecayLoggingHook', 'LoadBackboneHook', 'SoMAMetaHook', 'LegacyKeysHook',
           'unwrap_model']


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

    Two moments, one meaning (the release's: the converted backbone completes a checkpoint):

    * ``before_run``: the weights go into the backbone (its ``.model`` for SoMA, whose
      adapters are then SVD-initialised on them: 'residual' semantics), before weight
      initialisation (the backbone is marked initialised, so ``init_weights`` keeps it).
      This is what a run that loads no checkpoint trains from.
    * ``after_load_checkpoint`` (``load_from`` / ``resume``; mmengine calls it before the
      state dict goes into the model): the converted keys the checkpoint lacks are put into
      it (and into its ``ema_state_dict``), so ``load_from=<adapter-only checkpoint>`` works
      as in the release. Keys already in the checkpoint win. The adapter's semantics are
      honoured (:func:`soma.apis.checkpoint.merge_soma_weights`): for 'release' the adapted
      weights are W_pretrained, for 'residual' they are rebuilt as W_res, on the model's
      device. The loaded checkpoint then replaces everything ``before_run`` put in, so a
      released adapter never sits on W_res.

    Args:
        checkpoint_path: the converted backbone (``.pth`` or ``.safetensors``); keys are plain
            DINOv2 keys, optionally prefixed ``backbone.`` / ``backbone.model.``.
        strict: raise when backbone weights are missing from the file or shapes differ.
    """

    priority = 'VERY_HIGH'  # before EMAHook (NORMAL) loads the checkpoint into its copy

    def __init__(self, checkpoint_path, strict=True):
        self.checkpoint_path = os.fspath(checkpoint_path)
        self.strict = strict

    def before_run(self, runner):
        load_backbone_weights(unwrap_model(runner.model), self.checkpoint_path, self.strict,
                              logger=runner.logger)

    def after_load_checkpoint(self, runner, checkpoint):
        insert_backbone_weights(unwrap_model(runner.model), checkpoint, self.checkpoint_path,
                                self.strict, logger=runner.logger)


def _strip_backbone_prefix(state_dict):
    out = {}
    for key, value in state_dict.items():
        for prefix in ('module.', 'backbone.', 'model.'):
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def _backbone_target(model):
    """``(module holding the DINOv2 keys, its key prefix in the model's state dict)``."""
    backbone = model.backbone
    if _is_soma(backbone):
        from soma.apis.checkpoint import BACKBONE_PREFIX
        return backbone.model, BACKBONE_PREFIX
    return backbone, 'backbone.'


def _converted_weights(target, checkpoint_path, strict):
    """The converted file's tensors that fit ``target`` (plain keys); one-line errors."""
    from soma.utils.checkpoint_io import CheckpointError, get_state_dict, load_checkpoint_file
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
    return {k: state[k] for k in sorted(common)}


def load_backbone_weights(model, checkpoint_path, strict=True, logger=None):
    """Load a converted backbone checkpoint into ``model.backbone`` (its ``.model`` for SoMA).

    Raises ``FileNotFoundError``/``CheckpointError``/``ValueError`` with one line naming the
    file and the first offending key.
    """
    target, _ = _backbone_target(model)
    weights = _converted_weights(target, checkpoint_path, strict)
    target.load_state_dict(weights, strict=False)
    if hasattr(target, 'is_init'):
        target.is_init = True  # mmengine's flag: init_weights() must not overwrite these weights
    if logger is not None:
        logger.info(f'LoadBackboneHook: loaded {len(weights)} backbone tensors from '
                    f'{checkpoint_path}')
    return sorted(weights)


def insert_backbone_weights(model, checkpoint, checkpoint_path, strict=True, logger=None):
    """Complete ``checkpoint`` (a dict about to be loaded into ``model``) in place.

    The converted backbone's keys that ``checkpoint['state_dict']`` lacks are added under the
    model's backbone prefix, and under ``module.`` in ``ema_state_dict`` when there is one.
    With SoMA adapter keys in the checkpoint, the values come from
    :func:`soma.apis.checkpoint.merge_soma_weights` (W_pretrained for 'release', W_res
    rebuilt for 'residual'). Returns the added state-dict keys.
    """
    from soma.apis.checkpoint import EMA_PREFIX, merge_soma_weights
    from soma.peft.config import ADAPTER_KEYWORD
    from soma.utils.checkpoint_io import EMA_STATE_DICT
    target, prefix = _backbone_target(model)
    state_dict = checkpoint['state_dict'] if 'state_dict' in checkpoint else checkpoint
    ema = checkpoint.get(EMA_STATE_DICT) if 'state_dict' in checkpoint else None
    ema = ema if isinstance(ema, dict) else None
    wanted = [prefix + k for k in target.state_dict() if ADAPTER_KEYWORD not in k]
    if all(k in state_dict for k in wanted) and (
            ema is None or all(EMA_PREFIX + k in ema for k in wanted)):
        return []  # a full checkpoint (e.g. resume): nothing to add
    weights = _converted_weights(target, checkpoint_path, strict)
    full = {prefix + k: v for k, v in weights.items()}
    full_ema = {EMA_PREFIX + k: v for k, v in full.items()}
    if prefix != 'backbone.' and any(k.startswith(prefix) and ADAPTER_KEYWORD in k
                                     for k in state_dict):
        device = next(target.parameters()).device
        merged = merge_soma_weights(checkpoint_path, checkpoint, device=device)
        full = {k: v for k, v in merged['state_dict'].items() if k in full}
        full_ema = {k: v for k, v in merged.get(EMA_STATE_DICT, full_ema).items()
                    if k in full_ema}
    added = [k for k in full if k not in state_dict]
    for key in added:
        state_dict[key] = full[key]
    if ema is not None:
        for key, value in full_ema.items():
            ema.setdefault(key, value)
    if logger is not None and added:
        logger.info(f'LoadBackboneHook: added {len(added)} backbone tensors from '
                    f'{checkpoint_path} to the loaded checkpoint')
    return added


def _is_soma(backbone):
    try:
        from soma.peft import SoMAModel
    except ImportError:
        return False
    return isinstance(backbone, SoMAModel)


def _soma_backbones(runner):
    """The SoMA backbone of the runner's model and those of its EMA copies (``EMAHook``)."""
    models = [unwrap_model(runner.model)]
    for hook in runner.hooks:
        ema = getattr(hook, 'ema_model', None)
        if ema is not None:
            models.append(unwrap_model(getattr(ema, 'module', ema)))
    backbones = [getattr(m, 'backbone', None) for m in models]
    return [b for b in backbones if b is not None and _is_soma(b)]


@register_hook
class LegacyKeysHook(Hook):
    """Rename the release's legacy Co-DETR keys of a checkpoint loaded by the runner.

    ``load_from``/``resume`` of a released detector checkpoint (``soma_dinov2-L_dgod_best.pth``
    or any checkpoint of the release's Co-DETR) go through mmengine's loader, not through
    :func:`soma.apis.checkpoint.load_soma_checkpoint_file`: this hook applies the same rules
    (:mod:`soma.apis.legacy_keys`) in ``after_load_checkpoint``, in place and before every
    other hook (EMAHook, LoadBackboneHook) reads the checkpoint. A no-op on our own layout.
    """

    priority = 'HIGHEST'

    def after_load_checkpoint(self, runner, checkpoint):
        from soma.apis.legacy_keys import rename_legacy_codetr_checkpoint
        renamed = rename_legacy_codetr_checkpoint(checkpoint, 'the loaded checkpoint')
        if renamed is not checkpoint:
            checkpoint.update(renamed)


@register_hook
class SoMAMetaHook(Hook):
    """SoMA metadata of checkpoints, both ways.

    * ``before_save_checkpoint``: ``checkpoint['meta']['soma']`` = the backbone's
      ``checkpoint_meta()`` (semantics and adapter config); for a backbone adapted by
      ``peft`` (``peft_cfg``), ``checkpoint['meta']['peft']`` = its adapter's
      ``checkpoint_meta()`` (the resolved peft config, start block, base-weight semantics,
      trained keys), so the extract/merge/fold tools rebuild the adapter from the file alone.
    * ``after_load_checkpoint`` (``load_from`` / ``resume``, before the state dict goes into
      the model): when the checkpoint carries the adapted weights of the backbone (weight and
      ``lora_A`` of a layer), the backbone takes the checkpoint's semantics
      (:func:`soma.apis.checkpoint.checkpoint_semantics`, no meta: 'release'), and so do the
      EMA copies: fine-tuning from a merged released model keeps writing 'release'. An
      adapter-only checkpoint (no weights) whose semantics differ from the model's is
      refused: a released adapter would compute W_res + s*B@A (merge it first, or add
      ``LoadBackboneHook``, which runs earlier and completes it with W_pretrained).
    """

    priority = 'VERY_LOW'

    def before_save_checkpoint(self, runner, checkpoint):
        backbone = getattr(unwrap_model(runner.model), 'backbone', None)
        if backbone is None:
            return
        from soma.models.peft_backbone import peft_adapter_of
        adapter = peft_adapter_of(backbone)
        if adapter is not None:
            from soma.peft.peft_adapters import PEFT_META_KEY
            checkpoint.setdefault('meta', {})[PEFT_META_KEY] = adapter.checkpoint_meta()
            return
        if not _is_soma(backbone):
            return
        from soma.peft.config import META_KEY
        checkpoint.setdefault('meta', {})[META_KEY] = backbone.checkpoint_meta()

    def after_load_checkpoint(self, runner, checkpoint):
        backbones = _soma_backbones(runner)
        if not backbones:
            return
        from soma.apis.checkpoint import adapted_layers_in, checkpoint_semantics
        from soma.utils.checkpoint_io import CheckpointError
        has_adapters, has_weights = adapted_layers_in(checkpoint, backbones[0].adapted_layers())
        if not has_adapters:
            return
        semantics, current = checkpoint_semantics(checkpoint), backbones[0].semantics
        if has_weights:
            for backbone in backbones:
                backbone.semantics = semantics
            runner.logger.info(f'SoMAMetaHook: the loaded checkpoint carries adapted weights '
                               f'of {semantics!r} semantics; the checkpoints written say so')
        elif semantics != current:
            raise CheckpointError(
                f'the loaded checkpoint holds adapters of {semantics!r} semantics but no '
                f'backbone weights, while the model\'s weights are of {current!r} semantics: '
                f'merge it with the converted backbone first (tools/merge_soma_weights.py) or '
                f"add dict(type='LoadBackboneHook', checkpoint_path=CONVERTED) to custom_hooks")
