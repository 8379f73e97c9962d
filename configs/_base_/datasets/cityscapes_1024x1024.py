# Cityscapes (fine annotations, trainIds). Crop 1024.
# 1024 train scale as the release's Cityscapes->ACDC/BDD+Mapillary 1024 runs: shortest edge
# chosen among int(1024 * 0.1 * x), x = 5..20, longer edge at most 4096.
# Everything else as cityscapes_512x512.py.
_base_ = ['./cityscapes_512x512.py']
cityscapes_crop_size = (1024, 1024)
cityscapes_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomChoiceResize', scales=[int(1024 * x * 0.1) for x in range(5, 21)],
         resize_type='ResizeShortestEdge', max_size=4096),
    dict(type='RandomCrop', crop_size=cityscapes_crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
train_cityscapes = dict(pipeline=cityscapes_train_pipeline)
