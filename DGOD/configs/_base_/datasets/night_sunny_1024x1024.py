# Diverse Weather, Night-Sunny (target domain: tested on its whole train.txt);
# 1024x1024 padded inputs.
ns_type = 'DiverseWeatherDataset'
ns_root = 'data/diverseWeather/Night-Sunny'
ns_test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='Resize', scale=(1024, 1024), keep_ratio=True),
    dict(type='Pad', size=(1024, 1024), pad_val=dict(img=(114, 114, 114))),
    # annotations after Resize: the boxes stay in original image coordinates
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
test_ns = dict(
    type=ns_type,
    data_root=ns_root,
    ann_file='VOC2007/ImageSets/Main/train.txt',
    data_prefix=dict(sub_data_root='VOC2007/'),
    test_mode=True,
    pipeline=ns_test_pipeline,
    backend_args=None)
