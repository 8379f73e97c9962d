from .dinov2 import DinoVisionTransformer  # noqa: F401
from .hf_vision import HFVisionBackbone  # noqa: F401
