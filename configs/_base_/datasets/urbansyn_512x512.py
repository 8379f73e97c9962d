# UrbanSyn (train; val = the same folders). Crop 512.
# Train: shortest edge chosen among int(512 * 0.1 * x), x = 5..20, longer edge at most 2048.
ur_type = 'CityscapesDataset'
ur_root = 'data/urbansyn/'
ur_crop_size = (512, 512)
ur_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomChoiceResize', scales=[int(512 * x * 0.1) for x in range(5, 21)],
         resize_type='ResizeShortestEdge', max_size=2048),
    dict(type='RandomCrop', crop_size=ur_crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
ur_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2560, 1580), keep_ratio=True),
    dict(type='LoadAnnotations'),  # after Resize: labels stay at full resolution
    dict(type='PackSegInputs'),
]
train_ur = dict(
    type=ur_type,
    data_root=ur_root,
    data_prefix=dict(img_path='rgb', seg_map_path='ss'),
    img_suffix='.png',
    seg_map_suffix='.png',
    pipeline=ur_train_pipeline,
)
val_ur = dict(
    type=ur_type,
    data_root=ur_root,
    data_prefix=dict(img_path='rgb', seg_map_path='ss'),
    img_suffix='.png',
    seg_map_suffix='.png',
    pipeline=ur_test_pipeline,
)
