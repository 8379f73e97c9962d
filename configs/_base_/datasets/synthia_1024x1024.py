# SYNTHIA-RAND-CITYSCAPES (train; val = the same folders). Crop 1024.
# 1024 train scale as the release's G+S+U 1024 run: RandomResize (2048, 1024) x [0.5, 2].
# Everything else as synthia_512x512.py.
_base_ = ['./synthia_512x512.py']
syn_crop_size = (1024, 1024)
syn_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(2048, 1024), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=syn_crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
train_syn = dict(pipeline=syn_train_pipeline)
