# GTAV (all 24,966 images train; val = the same folders). Crop 1024.
# 1024 train scale as the release's G+S+U 1024 run: RandomResize (2048, 1024) x [0.5, 2].
# Everything else as gta_512x512.py.
_base_ = ['./gta_512x512.py']
gta_crop_size = (1024, 1024)
gta_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(2048, 1024), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=gta_crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
train_gta = dict(pipeline=gta_train_pipeline)
