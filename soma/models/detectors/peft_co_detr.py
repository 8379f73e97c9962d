"""Co-DETR with a SoMA-adapted backbone, and the frozen-backbone baseline.

``PEFTBackboneCoDETR``: the backbone is wrapped with SoMA from ``backbone.lora_cfg``
(keys ``backbone.model.*``); the SVD runs after ``init_weights()`` on the pretrained
weights (unless ``svd_init_on='construction'``); SoMA's trainable/frozen rules are
re-applied at every ``train()`` call (norms, layer scales, position and patch embeddings
stay frozen). Neck and heads train as usual.

``FrozenBackboneCoDETR``: no backbone parameter trains; the backbone stays in eval mode
and runs without gradients.
"""
import torch

from soma.models.peft_backbone import (freeze_backbone, init_soma_after_weights,
                                       refreeze_soma, wrap_backbone_with_soma)
from soma.registry import DET_MODELS
from .co_detr import CoDETR


@DET_MODELS.register_module()
class PEFTBackboneCoDETR(CoDETR):
    """Co-DETR whose backbone is adapted with SoMA (see module docstring)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.backbone = wrap_backbone_with_soma(self.backbone)
        refreeze_soma(self.backbone)

    def init_weights(self):
        super().init_weights()
        init_soma_after_weights(self.backbone)

    def train(self, mode=True):
        super().train(mode)
        refreeze_soma(self.backbone)
        return self


@DET_MODELS.register_module()
class FrozenBackboneCoDETR(CoDETR):
    """Co-DETR with a frozen backbone: no gradients, always in eval mode."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        freeze_backbone(self.backbone)

    def train(self, mode=True):
        super().train(mode)
        freeze_backbone(self.backbone)
        return self

    def extract_feat(self, batch_inputs):
        with torch.no_grad():
            x = self.backbone(batch_inputs)
        x = tuple(feat.detach() for feat in x)
        if self.with_neck:
            x = self.neck(x)
        return x


__all__ = ['PEFTBackboneCoDETR', 'FrozenBackboneCoDETR']
