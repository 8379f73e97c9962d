"""Wrapping, initialising and freezing a backbone's adapter: one place for segmentors and
detectors, whatever the backbone and whatever the method.

The method comes from the backbone's config: ``lora_cfg`` (SoMA, :mod:`soma.peft`) or
``peft_cfg`` (a ``peft`` config, e.g. ``dict(type='LoraConfig', r=16, use_dora=True)``,
:mod:`soma.peft.peft_adapters`); never both. A PEFT model builds its backbone as usual, then

1. ``self.backbone = wrap_backbone_with_soma(backbone)`` (alias :func:`wrap_backbone`).
   SoMA: a ``SoMAModel`` (keys ``backbone.model.*``); peft: the same backbone, adapted in place
   by peft's tuner (keys ``backbone.*``; adapters ``...q.lora_A.default.weight``);
2. in ``init_weights()``: ``super().init_weights()`` then
   ``init_soma_after_weights(self.backbone)`` (loads the backbone's own ``init_cfg`` when
   nobody did, then runs the weight-reading inits still pending, on the pretrained weights:
   SoMA's SVD; peft's ``pissa``/``olora``/``mica`` and DoRA's magnitude);
3. in ``train(mode)``: ``super().train(mode)`` then ``refreeze_soma(self.backbone)``, so
   the method's trainable/frozen rules hold at every ``train()`` call.

``trainable_parameter_report(backbone)`` gives the counts; ``merge_and_unload_backbone``
folds the adapters into plain weights; ``freeze_backbone(module)`` is the frozen-backbone
baseline (no gradients, eval mode).
"""
import logging

from mmengine.logging import MMLogger, print_log
from torch import nn


def _adapter_cfgs_of(backbone: nn.Module):
    lora_cfg = getattr(backbone, 'lora_cfg', None)
    peft_cfg = getattr(backbone, 'peft_cfg', None)
    if lora_cfg and peft_cfg:
        raise ValueError(f'backbone {type(backbone).__name__} has both lora_cfg and peft_cfg: '
                         f'set one of them (lora_cfg=None for a peft method)')
    if not lora_cfg and not peft_cfg:
        raise ValueError(
            f'backbone {type(backbone).__name__} has no lora_cfg or peft_cfg: set '
            f'backbone.lora_cfg (SoMA) or backbone.peft_cfg (peft) in the config to use a '
            f'PEFT model')
    return (dict(lora_cfg) if lora_cfg else None), (dict(peft_cfg) if peft_cfg else None)


def peft_adapter_of(backbone):
    """The :class:`~soma.peft.peft_adapters.PeftAdapter` of a peft-adapted backbone, else None."""
    return backbone.__dict__.get('peft_adapter') if isinstance(backbone, nn.Module) else None


def wrap_backbone_with_soma(backbone: nn.Module):
    """Put the adapter of the backbone's ``lora_cfg`` or ``peft_cfg`` on it; return the module
    that replaces the backbone (a ``SoMAModel``, or the backbone itself for peft).

    SoMA's SVD runs now only when ``svd_init_on == 'construction'`` (the original release's
    order); otherwise it waits for :func:`init_soma_after_weights`. In construction mode
    ``DinoVisionTransformer`` (reading the same ``lora_cfg``) has left its linears as
    PyTorch's default init made them, so the SVD sees the release's random weights.
    """
    lora_cfg, peft_cfg = _adapter_cfgs_of(backbone)
    if peft_cfg is not None:
        from soma.peft.peft_adapters import apply_peft_adapter
        adapter = apply_peft_adapter(backbone, peft_cfg)
        print_log(adapter.trainable_parameter_report(backbone)['table'], logger='current')
        return backbone
    from soma.peft import SoMAConfig, SoMAModel
    config = SoMAConfig.from_dict(lora_cfg)
    return SoMAModel(config, backbone, init_adapters=(config.svd_init_on == 'construction'))


wrap_backbone = wrap_backbone_with_soma


def _has_pretrained_init(module: nn.Module) -> bool:
    if getattr(module, 'loads_pretrained_weights', False):  # e.g. HFVisionBackbone(model=dir)
        return True
    init_cfg = getattr(module, 'init_cfg', None)
    cfgs = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
    return any(isinstance(c, dict) and c.get('type') == 'Pretrained' for c in cfgs)


def init_soma_after_weights(soma_model, logger=None) -> None:
    """Initialise the wrapped backbone (its ``init_cfg``), then the pending adapters.

    mmengine's ``init_weights`` only recurses into children that define ``init_weights``;
    the pure-PyTorch ``SoMAModel`` may not, so the wrapped backbone is initialised here
    when that has not happened yet. A peft-adapted backbone: the same, then peft's inits that
    read the base weight (:meth:`soma.peft.peft_adapters.PeftAdapter.init_after_weights`).
    """
    from soma.peft import SoMAModel
    logger = logger or MMLogger.get_current_instance()
    adapter = peft_adapter_of(soma_model)
    if adapter is None and not isinstance(soma_model, SoMAModel):
        return  # no adapter (e.g. already merged): nothing pending
    inner = soma_model if adapter is not None else soma_model.model
    if hasattr(inner, 'init_weights') and not getattr(inner, 'is_init', False):
        inner.init_weights()
    if not _has_pretrained_init(inner):
        print_log(
            'PEFT: the backbone has no Pretrained init_cfg, so the adapters are initialised '
            'from randomly initialised weights (fine for tests; for real training set '
            'backbone.init_cfg=dict(type="Pretrained", checkpoint=<converted DINOv2>))',
            logger=logger, level=logging.WARNING)
    if adapter is not None:
        adapter.init_after_weights(soma_model)
        adapter.freeze(soma_model)
    else:
        soma_model.init_adapters()


def refreeze_soma(soma_model) -> None:
    """Re-apply the adapter's trainable/frozen rules (call after every ``train()``).

    A backbone without adapter (e.g. replaced by :func:`merge_and_unload_backbone` for
    inference) has no such rules and is left as it is.
    """
    from soma.peft import SoMAModel
    adapter = peft_adapter_of(soma_model)
    if adapter is not None:
        adapter.freeze(soma_model)
    elif isinstance(soma_model, SoMAModel):
        soma_model.freeze()


def trainable_parameter_report(backbone) -> dict:
    """Trainable/total parameter counts per block and overall, plus a printable ``table``."""
    adapter = peft_adapter_of(backbone)
    if adapter is not None:
        return adapter.trainable_parameter_report(backbone)
    if hasattr(backbone, 'trainable_parameter_report'):
        return backbone.trainable_parameter_report()
    from soma.peft.model import parameter_report
    return parameter_report(backbone, 'blocks', f'{type(backbone).__name__} parameters')


def merge_and_unload_backbone(backbone) -> nn.Module:
    """The backbone with its adapters folded into plain layers (SoMA's or peft's own
    ``merge_and_unload``); a backbone without adapters is returned as it is."""
    adapter = peft_adapter_of(backbone)
    if adapter is not None:
        return adapter.merge_and_unload()
    if hasattr(backbone, 'merge_and_unload'):
        return backbone.merge_and_unload()
    return backbone


def freeze_backbone(module: nn.Module) -> nn.Module:
    """Freeze ``module``: no parameter requires grad, and it is put in eval mode."""
    for param in module.parameters():
        param.requires_grad = False
    module.eval()
    return module


__all__ = ['wrap_backbone_with_soma', 'wrap_backbone', 'init_soma_after_weights',
           'refreeze_soma', 'freeze_backbone', 'trainable_parameter_report',
           'merge_and_unload_backbone', 'peft_adapter_of']
