"""Encoder-decoder whose backbone is adapted with SoMA (only the minor components train)."""
from soma.models.peft_backbone import (init_soma_after_weights, refreeze_soma,
                                       wrap_backbone_with_soma)
from soma.registry import register_model

from .slide_inference import BatchedSlideEncoderDecoder

__all__ = ['PEFTBackboneEncoderDecoder']


@register_model
class PEFTBackboneEncoderDecoder(BatchedSlideEncoderDecoder):
    """mmseg ``EncoderDecoder`` with a SoMA-wrapped backbone (config: ``backbone.lora_cfg``).

    The backbone is built as usual, then wrapped (state-dict keys ``backbone.model.*``) and
    frozen by SoMA's rules (SPEC 3): adapters, target biases and the mask token train; norms,
    layer scales, position and patch embeddings are frozen again at every ``train()``. The
    adapters are SVD-initialised after ``init_weights()`` (i.e. on the pretrained weights).
    Arguments are ``EncoderDecoder``'s; sliding windows are batched
    (:class:`BatchedSlideEncoderDecoder`).
    """

    def __init__(self, backbone, decode_head, **kwargs):
        super().__init__(backbone=backbone, decode_head=decode_head, **kwargs)
        self.backbone = wrap_backbone_with_soma(self.backbone)
        refreeze_soma(self.backbone)

    def init_weights(self):
        super().init_weights()
        init_soma_after_weights(self.backbone)

    def train(self, mode=True):
        super().train(mode)
        refreeze_soma(self.backbone)
        return self
