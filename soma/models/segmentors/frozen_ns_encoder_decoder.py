"""Baseline: full fine-tuning, except norms, layer scales, position and patch embeddings."""

from soma.peft.config import ALWAYS_FROZEN_KEYWORDS
from soma.registry import register_model

from .slide_inference import BatchedSlideEncoderDecoder

__all__ = ['FrozenNSEncoderDecoder', 'freeze_norm_scale_embeddings']


def freeze_norm_scale_embeddings(backbone, keywords=ALWAYS_FROZEN_KEYWORDS):
    """``requires_grad=False`` for backbone parameters whose name contains a keyword."""
    frozen = []
    for name, param in backbone.named_parameters():
        if any(k in name for k in keywords):
            param.requires_grad = False
            frozen.append(name)
    return frozen


@register_model
class FrozenNSEncoderDecoder(BatchedSlideEncoderDecoder):
    """mmseg ``EncoderDecoder`` fine-tuning the whole backbone except the parameters named by
    SoMA's always-frozen keywords (``norm1``, ``norm2``, ``ls1``, ``ls2``, ``pos_embed``,
    ``patch_embed``), frozen again at every ``train()``. The release trained it with
    backbone lr x0.01.
    Sliding windows are batched (:class:`BatchedSlideEncoderDecoder`).
    """

    def __init__(self, backbone, decode_head, **kwargs):
        super().__init__(backbone=backbone, decode_head=decode_head, **kwargs)
        freeze_norm_scale_embeddings(self.backbone)

    def train(self, mode=True):
        super().train(mode)
        freeze_norm_scale_embeddings(self.backbone)
        return self
