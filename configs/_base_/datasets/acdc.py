# ACDC (fog, night, rain, snow): `val_<cond>_acdc` with labels, `test_<cond>_acdc` without
# labels (the benchmark's test split: predictions are submitted to the ACDC server).
acdc_type = 'CityscapesDataset'
acdc_root = 'data/acdc/'
acdc_img_suffix = '_rgb_anon.png'
acdc_seg_map_suffix = '_gt_labelTrainIds.png'
acdc_val_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(1920, 1080), keep_ratio=True),
    dict(type='LoadAnnotations'),  # after Resize: labels stay at full resolution
    dict(type='PackSegInputs'),
]
acdc_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(1920, 1080), keep_ratio=True),
    dict(type='PackSegInputs'),
]
val_fog_acdc = dict(
    type=acdc_type, data_root=acdc_root,
    data_prefix=dict(img_path='rgb_anon/fog/val', seg_map_path='gt/fog/val'),
    img_suffix=acdc_img_suffix, seg_map_suffix=acdc_seg_map_suffix, pipeline=acdc_val_pipeline)
val_night_acdc = dict(
    type=acdc_type, data_root=acdc_root,
    data_prefix=dict(img_path='rgb_anon/night/val', seg_map_path='gt/night/val'),
    img_suffix=acdc_img_suffix, seg_map_suffix=acdc_seg_map_suffix, pipeline=acdc_val_pipeline)
val_rain_acdc = dict(
    type=acdc_type, data_root=acdc_root,
    data_prefix=dict(img_path='rgb_anon/rain/val', seg_map_path='gt/rain/val'),
    img_suffix=acdc_img_suffix, seg_map_suffix=acdc_seg_map_suffix, pipeline=acdc_val_pipeline)
val_snow_acdc = dict(
    type=acdc_type, data_root=acdc_root,
    data_prefix=dict(img_path='rgb_anon/snow/val', seg_map_path='gt/snow/val'),
    img_suffix=acdc_img_suffix, seg_map_suffix=acdc_seg_map_suffix, pipeline=acdc_val_pipeline)
test_fog_acdc = dict(
    type=acdc_type, data_root=acdc_root,
    data_prefix=dict(img_path='rgb_anon/fog/test', seg_map_path='gt/fog/test'),
    img_suffix=acdc_img_suffix, seg_map_suffix=acdc_seg_map_suffix, pipeline=acdc_test_pipeline)
test_night_acdc = dict(
    type=acdc_type, data_root=acdc_root,
    data_prefix=dict(img_path='rgb_anon/night/test', seg_map_path='gt/night/test'),
    img_suffix=acdc_img_suffix, seg_map_suffix=acdc_seg_map_suffix, pipeline=acdc_test_pipeline)
test_rain_acdc = dict(
    type=acdc_type, data_root=acdc_root,
    data_prefix=dict(img_path='rgb_anon/rain/test', seg_map_path='gt/rain/test'),
    img_suffix=acdc_img_suffix, seg_map_suffix=acdc_seg_map_suffix, pipeline=acdc_test_pipeline)
test_snow_acdc = dict(
    type=acdc_type, data_root=acdc_root,
    data_prefix=dict(img_path='rgb_anon/snow/test', seg_map_path='gt/snow/test'),
    img_suffix=acdc_img_suffix, seg_map_suffix=acdc_seg_map_suffix, pipeline=acdc_test_pipeline)
