"""Wrapping, initialising and freezing a backbone with SoMA: one place for segmentors and detectors.

A PEFT model builds its backbone as usual, then

1. ``self.backbone = wrap_backbone_with_soma(backbone)`` (keys become ``backbone.model.*``);
2. in ``init_weights()``: ``super().init_weights()`` then
   ``init_soma_after_weights(self.backbone)`` (loads the backbone's own ``init_cfg`` when
   nobody did, then runs the SVD of the layers still pending, on the pretrained weights);
3. in ``train(mode)``: ``super().train(mode)`` then ``refreeze_soma(self.backbone)``, so
   norms, layer scales, position and patch embeddings stay frozen at every ``train()`` call.

``freeze_backbone(module)`` is the frozen-backbone baseline (no gradients, eval mode).
"""
import logging

from mmengine.logging import MMLogger, print_log
from torch import nn


def _lora_cfg_of(backbone: nn.Module) -> dict:
    lora_cfg = getattr(backbone, 'lora_cfg', None)
    if not lora_cfg:
        raise ValueError(
            f'backbone {type(backbone).__name__} has no lora_cfg: set backbone.lora_cfg '
            f'in the config to use a PEFT model')
    return dict(lora_cfg)


def wrap_backbone_with_soma(backbone: nn.Module):
    """Wrap ``backbone`` with SoMA built from its ``lora_cfg``; return the ``SoMAModel``.

    The SVD runs now only when ``svd_init_on == 'construction'`` (the original release's
    order); otherwise it waits for :func:`init_soma_after_weights`. In construction mode
    ``DinoVisionTransformer`` (reading the same ``lora_cfg``) has left its linears as
    PyTorch's default init made them, so the SVD sees the release's random weights.
    """
    from soma.peft import SoMAConfig, SoMAModel
    config = SoMAConfig.from_dict(_lora_cfg_of(backbone))
    return SoMAModel(config, backbone, init_adapters=(config.svd_init_on == 'construction'))


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
    when that has not happened yet.
    """
    logger = logger or MMLogger.get_current_instance()
    inner = soma_model.model
    if hasattr(inner, 'init_weights') and not getattr(inner, 'is_init', False):
        inner.init_weights()
    if not _has_pretrained_init(inner):
        print_log(
            'SoMA: the backbone has no Pretrained init_cfg, so the adapters are initialised '
            'from the SVD of randomly initialised weights (fine for tests; for real training '
            'set backbone.init_cfg=dict(type="Pretrained", checkpoint=<converted DINOv2>))',
            logger=logger, level=logging.WARNING)
    soma_model.init_adapters()


def refreeze_soma(soma_model) -> None:
    """Re-apply SoMA's trainable/frozen rules (call after every ``train()``).

    A backbone that is no longer a ``SoMAModel`` (e.g. replaced by
    ``SoMAModel.merge_and_unload()`` for inference) has no such rules and is left as it is.
    """
    from soma.peft import SoMAModel
    if isinstance(soma_model, SoMAModel):
        soma_model.freeze()


def freeze_backbone(module: nn.Module) -> nn.Module:
    """Freeze ``module``: no parameter requires grad, and it is put in eval mode."""
    for param in module.parameters():
        param.requires_grad = False
    module.eval()
    return module


__all__ = ['wrap_backbone_with_soma', 'init_soma_after_weights', 'refreeze_soma',
           'freeze_backbone']
