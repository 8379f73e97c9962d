"""SoMA for OpenMMLab.

``import soma`` registers every module of this package into the mmsegmentation and
mmdetection registries. Nothing heavy runs at import time; neither torchvision nor
xFormers is needed.
"""
from .version import __version__
from . import peft  # noqa: F401  (pure PyTorch)
from .utils import checkpoint_io  # noqa: F401  (allow-lists mmengine checkpoint types)
from . import models, engine, evaluation, datasets  # noqa: F401,E402  (registration)

__all__ = ['__version__']
