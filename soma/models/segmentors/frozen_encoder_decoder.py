"""Baseline: frozen backbone (no gradients, eval mode), only the head trains."""
import torch

from soma.models.peft_backbone import freeze_backbone
from soma.registry import register_model

from .slide_inference import BatchedSlideEncoderDecoder

__all__ = ['FrozenBackboneEncoderDecoder']


@register_model
class FrozenBackboneEncoderDecoder(BatchedSlideEncoderDecoder):
    """mmseg ``EncoderDecoder`` whose backbone never trains.

    The backbone runs under ``torch.no_grad()`` and stays in eval mode even in ``train()``
    (no dropout/drop-path, no activation memory). Neck and heads train as usual.
    Sliding windows are batched (:class:`BatchedSlideEncoderDecoder`).
    """

    def __init__(self, backbone, decode_head, **kwargs):
        super().__init__(backbone=backbone, decode_head=decode_head, **kwargs)
        freeze_backbone(self.backbone)

    def train(self, mode=True):
        super().train(mode)
        freeze_backbone(self.backbone)
        return self

    def extract_feat(self, inputs):
        with torch.no_grad():
            x = self.backbone(inputs)
        if self.with_neck:
            x = self.neck(x)
        return x
