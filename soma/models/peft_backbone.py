"""The one seam between a model and its backbone's adapter, whatever the method.

The method comes from the backbone's config: ``lora_cfg`` (SoMA, :mod:`soma.peft`) or
``peft_cfg`` (a ``peft`` config, e.g. ``dict(type='LoraConfig', r=16, use_dora=True)``);
never both. Both are driven through one interface
(:class:`soma.models.adapters.base.BackboneAdapter`), found by :func:`adapter_of`; nothing
below asks which method it is. A PEFT model builds its backbone as usual, then

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
from typing import Optional

from mmengine.logging import MMLogger, print_log
from torch import nn

from soma.peft import SoMAModel
from soma.peft.model import parameter_report

from .adapters.base import BackboneAdapter
from .adapters.peft_tuner import PeftTuner
from .adapters.soma_tuner import SoMATuner

__all__ = ['adapter_of', 'wrap_backbone_with_soma', 'wrap_backbone', 'init_soma_after_weights',
           'refreeze_soma', 'freeze_backbone', 'trainable_parameter_report',
           'merge_and_unload_backbone', 'ADAPTER_METHODS']

# the backbone config key that asks for each method, and the adapter class that serves it
ADAPTER_METHODS = {'lora_cfg': SoMATuner, 'peft_cfg': PeftTuner}


def adapter_of(module: nn.Module) -> Optional[BackboneAdapter]:
    """The adapter of an adapted backbone (SoMA's wrapper or a peft-adapted backbone), else
    None (a plain backbone, or one whose adapters were merged and unloaded)."""
    if isinstance(module, SoMAModel):
        return SoMATuner(module)
    adapter = module.__dict__.get('peft_adapter') if isinstance(module, nn.Module) else None
    return adapter if isinstance(adapter, BackboneAdapter) else None


def _adapter_cfg_of(backbone: nn.Module):
    """``(config key, its dict)`` of the one adapter method the backbone's config asks for."""
    asked = [(key, getattr(backbone, key, None)) for key in ADAPTER_METHODS]
    asked = [(key, cfg) for key, cfg in asked if cfg]
    if len(asked) > 1:
        raise ValueError(f'backbone {type(backbone).__name__} has both lora_cfg and peft_cfg: '
                         f'set one of them (lora_cfg=None for a peft method)')
    if not asked:
        raise ValueError(
            f'backbone {type(backbone).__name__} has no lora_cfg or peft_cfg: set '
            f'backbone.lora_cfg (SoMA) or backbone.peft_cfg (peft) in the config to use a '
            f'PEFT model')
    key, cfg = asked[0]
    return key, dict(cfg)


def wrap_backbone_with_soma(backbone: nn.Module) -> nn.Module:
    """Put the adapter of the backbone's ``lora_cfg`` or ``peft_cfg`` on it; return the
    module that replaces the backbone (a ``SoMAModel``, or the backbone itself for peft).

    SoMA's SVD runs now only when ``svd_init_on == 'construction'`` (the original release's
    order); otherwise it waits for :func:`init_soma_after_weights`. In construction mode
    ``DinoVisionTransformer`` (reading the same ``lora_cfg``) has left its linears as
    PyTorch's default init made them, so the SVD sees the release's random weights.
    """
    key, cfg = _adapter_cfg_of(backbone)
    adapter = ADAPTER_METHODS[key].wrap(backbone, cfg)
    print_log(adapter.trainable_parameter_report()['table'], logger='current')
    return adapter.module


wrap_backbone = wrap_backbone_with_soma


def _has_pretrained_init(module: nn.Module) -> bool:
    if getattr(module, 'loads_pretrained_weights', False):  # e.g. HFVisionBackbone(model=dir)
        return True
    init_cfg = getattr(module, 'init_cfg', None)
    cfgs = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
    return any(isinstance(c, dict) and c.get('type') == 'Pretrained' for c in cfgs)


def init_soma_after_weights(module: nn.Module, logger: Optional[logging.Logger] = None
                            ) -> None:
    """Initialise the adapted backbone (its ``init_cfg``), then the pending adapters.

    mmengine's ``init_weights`` only recurses into children that define ``init_weights``;
    the pure-PyTorch ``SoMAModel`` does not, and outside mmengine nobody calls it: the
    backbone is initialised here when that has not happened yet, so that the adapters' inits
    (SoMA's SVD, peft's PiSSA/OLoRA/MiCA and DoRA's magnitude) read the loaded weights.
    """
    adapter = adapter_of(module)
    if adapter is None:
        return  # no adapter (e.g. already merged): nothing pending
    backbone = adapter.backbone
    if hasattr(backbone, 'init_weights') and not getattr(backbone, 'is_init', False):
        backbone.init_weights()
    if not _has_pretrained_init(backbone):
        print_log(
            'PEFT: the backbone has no Pretrained init_cfg, so the adapters are initialised '
            'from randomly initialised weights (fine for tests; for real training set '
            'backbone.init_cfg=dict(type="Pretrained", checkpoint=<converted DINOv2>))',
            logger=logger or MMLogger.get_current_instance(), level=logging.WARNING)
    adapter.init_after_weights()
    adapter.freeze()


def refreeze_soma(module: nn.Module) -> None:
    """Re-apply the adapter's trainable/frozen rules (call after every ``train()``).

    A backbone without adapter (e.g. replaced by :func:`merge_and_unload_backbone` for
    inference) has no such rules and is left as it is.
    """
    adapter = adapter_of(module)
    if adapter is not None:
        adapter.freeze()


def trainable_parameter_report(backbone: nn.Module) -> dict:
    """Trainable/total parameter counts per block and overall, plus a printable ``table``."""
    adapter = adapter_of(backbone)
    if adapter is not None:
        return adapter.trainable_parameter_report()
    return parameter_report(backbone, getattr(backbone, 'layers_pattern', None),
                            f'{type(backbone).__name__} parameters')


def merge_and_unload_backbone(backbone: nn.Module) -> nn.Module:
    """The backbone with its adapters folded into plain layers (the method's own
    ``merge_and_unload``); a backbone without adapters is returned as it is."""
    adapter = adapter_of(backbone)
    return backbone if adapter is None else adapter.merge_and_unload()


def freeze_backbone(module: nn.Module) -> nn.Module:
    """Freeze ``module``: no parameter requires grad, and it is put in eval mode."""
    for param in module.parameters():
        param.requires_grad = False
    module.eval()
    return module
