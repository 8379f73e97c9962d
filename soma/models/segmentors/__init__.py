"""Segmentors: SoMA-adapted, frozen-backbone and frozen-norm/scale fine-tuning baselines,
all with batched sliding-window inference (``test_cfg.slide_batch_size``)."""
from .frozen_encoder_decoder import FrozenBackboneEncoderDecoder
from .frozen_ns_encoder_decoder import FrozenNSEncoderDecoder
from .peft_encoder_decoder import PEFTBackboneEncoderDecoder
from .slide_inference import BatchedSlideEncoderDecoder, batched_slide_inference, slide_windows

__all__ = ['PEFTBackboneEncoderDecoder', 'FrozenBackboneEncoderDecoder', 'FrozenNSEncoderDecoder',
           'BatchedSlideEncoderDecoder', 'batched_slide_inference', 'slide_windows']
