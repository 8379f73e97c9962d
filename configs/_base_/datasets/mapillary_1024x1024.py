# Mapillary Vistas mapped to the 19 Cityscapes classes; val halved. Crop 1024.
# 1024 train scale as the release's G+S+U 1024 run: RandomResize (2048, 1024) x [0.5, 2].
mapillary_type = 'CityscapesDataset'
mapillary_root = 'data/mapillary/'
mapillary_crop_size = (1024, 1024)
mapillary_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(2048, 1024), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=mapillary_crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
mapillary_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 1024), keep_ratio=True),
    dict(type='LoadAnnotations'),  # after Resize: labels stay at full resolution
    dict(type='PackSegInputs'),
]
train_mapillary = dict(
    type=mapillary_type,
    data_root=mapillary_root,
    data_prefix=dict(
        img_path='training/images', seg_map_path='cityscapes_trainIdLabel/train/label'),
    img_suffix='.jpg',
    seg_map_suffix='.png',
    pipeline=mapillary_train_pipeline,
)
val_mapillary = dict(
    type=mapillary_type,
    data_root=mapillary_root,
    data_prefix=dict(img_path='half/val_img', seg_map_path='half/val_label'),
    img_suffix='.jpg',
    seg_map_suffix='.png',
    pipeline=mapillary_test_pipeline,
)
