"""Dataset converters (raw downloads -> Cityscapes trainId labels); see docs/datasets.md.

Not imported by ``import soma``; the CLIs in ``tools/convert_datasets/`` call these.
"""
from .cityscapes import convert_cityscapes
from .gta import convert_gta
from .mapillary import (convert_mapillary, load_mapillary_table, mapillary_name_to_train_id,
                        resize_mapillary_half)
from .synthia import convert_synthia
from .urbansyn import convert_urbansyn

__all__ = [
    'convert_cityscapes', 'convert_gta', 'convert_mapillary', 'convert_synthia',
    'convert_urbansyn', 'load_mapillary_table', 'mapillary_name_to_train_id',
    'resize_mapillary_half'
]
