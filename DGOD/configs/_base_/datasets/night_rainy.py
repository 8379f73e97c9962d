# Diverse Weather, night_rainy (target domain: tested on its whole train.txt);
# the release's input size, 720x1280 (keep ratio).
nr_type = 'DiverseWeatherDataset'
nr_root = 'data/diverseWeather/night_rainy'
nr_test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='Resize', scale=(720, 1280), keep_ratio=True),
    # annotations after Resize: the boxes stay in original image coordinates
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
test_nr = dict(
    type=nr_type,
    data_root=nr_root,
    ann_file='VOC2007/ImageSets/Main/train.txt',
    data_prefix=dict(sub_data_root='VOC2007/'),
    test_mode=True,
    pipeline=nr_test_pipeline,
    backend_args=None)
