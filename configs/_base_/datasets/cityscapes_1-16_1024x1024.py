# 1/16 of the Cityscapes train split (file `data/cityscapes/train_1_16_v1.txt`, one
# `city/city_xxxxxx_yyyyyy` stem per line), crop 1024, fine-tuning after G+S+U.
# Train scale as the release's run: RandomResize (2048, 1024) x [0.5, 2].
cityscapes16_crop_size = (1024, 1024)
cityscapes16_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(2048, 1024), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=cityscapes16_crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
train_cityscapes_1_16 = dict(
    type='CityscapesDataset',
    data_root='data/cityscapes/',
    ann_file='train_1_16_v1.txt',
    data_prefix=dict(img_path='leftImg8bit/train', seg_map_path='gtFine/train'),
    img_suffix='_leftImg8bit.png',
    seg_map_suffix='_gtFine_labelTrainIds.png',
    pipeline=cityscapes16_train_pipeline,
)
