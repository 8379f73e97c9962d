"""Co-DETR (Co-DINO) detectors for domain-generalised detection (DGOD)."""
from .co_dino_transformer import CoDinoTransformer  # noqa: F401
from .co_dino_head import CoDINOHead  # noqa: F401
from .co_atss_head import CoATSSHead  # noqa: F401
from .co_roi_head import CoStandardRoIHead  # noqa: F401
from .co_detr import CoDETR  # noqa: F401
from .peft_co_detr import FrozenBackboneCoDETR, PEFTBackboneCoDETR  # noqa: F401

__all__ = ['CoDinoTransformer', 'CoDINOHead', 'CoATSSHead', 'CoStandardRoIHead', 'CoDETR',
           'PEFTBackboneCoDETR', 'FrozenBackboneCoDETR']
