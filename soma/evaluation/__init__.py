
from .dg_iou_metric import DGIoUMetric  # noqa: F401
from .dg_voc_metric import DGVOCMetric  # noqa: F401
from .submission import SegPredictionWriter  # noqa: F401
