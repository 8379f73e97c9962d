"""Segmentors: SoMA-adapted, frozen-backbone and frozen-norm/scale fine-tuning baselines."""
from .frozen_encoder_decoder import FrozenBackboneEncoderDecoder
from .frozen_ns_encoder_decoder import FrozenNSEncoderDecoder
from .peft_encoder_decoder import PEFTBackboneEncoderDecoder

__all__ = ['PEFTBackboneEncoderDecoder', 'FrozenBackboneEncoderDecoder', 'FrozenNSEncoderDecoder']
