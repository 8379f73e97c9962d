# Diverse Weather, daytime_foggy (target domain: tested on its whole train.txt);
# 1024x1024 padded inputs.
df_type = 'DiverseWeatherDataset'
df_root = 'data/diverseWeather/daytime_foggy'
df_test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='Resize', scale=(1024, 1024), keep_ratio=True),
    dict(type='Pad', size=(1024, 1024), pad_val=dict(img=(114, 114, 114))),
    # annotations after Resize: the boxes stay in original image coordinates
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
test_df = dict(
    type=df_type,
    data_root=df_root,
    ann_file='VOC2007/ImageSets/Main/train.txt',
    data_prefix=dict(sub_data_root='VOC2007/'),
    test_mode=True,
    pipeline=df_test_pipeline,
    backend_args=None)
