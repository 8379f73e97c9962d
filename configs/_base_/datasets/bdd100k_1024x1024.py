# BDD100K semantic segmentation (10k split). Crop 1024.
# 1024 train scale as the release's G+S+U 1024 run: RandomResize (2048, 1024) x [0.5, 2].
# Everything else as bdd100k_512x512.py.
_base_ = ['./bdd100k_512x512.py']
bdd_crop_size = (1024, 1024)
bdd_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(2048, 1024), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=bdd_crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
train_bdd = dict(pipeline=bdd_train_pipeline)
bdd_test_pipeline = [
    dict(type='LoadImageFromFile'),
    # The release evaluates its 1024 models on BDD resized to (2048, 1024), keep ratio.
    dict(type='Resize', scale=(2048, 1024), keep_ratio=True),
    dict(type='LoadAnnotations'),  # after Resize: labels stay at full resolution
    dict(type='PackSegInputs'),
]
val_bdd = dict(pipeline=bdd_test_pipeline)
