from . import backbones, detectors, segmentors  # noqa: F401
