# GTAV (all 24,966 images train; val = the same folders). Crop 512.
# Train: shortest edge chosen among int(512 * 0.1 * x), x = 5..20, longer edge at most 2048.
gta_type = 'CityscapesDataset'
gta_root = 'data/gta/'
gta_crop_size = (512, 512)
gta_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomChoiceResize', scales=[int(512 * x * 0.1) for x in range(5, 21)],
         resize_type='ResizeShortestEdge', max_size=2048),
    dict(type='RandomCrop', crop_size=gta_crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
gta_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(1280, 720), keep_ratio=True),
    dict(type='LoadAnnotations'),  # after Resize: labels stay at full resolution
    dict(type='PackSegInputs'),
]
train_gta = dict(
    type=gta_type,
    data_root=gta_root,
    data_prefix=dict(img_path='images', seg_map_path='labels'),
    img_suffix='.png',
    seg_map_suffix='_labelTrainIds.png',
    pipeline=gta_train_pipeline,
)
val_gta = dict(
    type=gta_type,
    data_root=gta_root,
    data_prefix=dict(img_path='images', seg_map_path='labels'),
    img_suffix='.png',
    seg_map_suffix='_labelTrainIds.png',
    pipeline=gta_test_pipeline,
)
