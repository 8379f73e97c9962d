from .dinov2 import DinoVisionTransformer  # noqa: F401
