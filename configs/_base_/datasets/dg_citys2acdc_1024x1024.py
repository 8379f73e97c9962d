# Cityscapes -> ACDC val (night, fog, snow, rain; crop 1024); mean over the four conditions.
_base_ = [
    './cityscapes_1024x1024.py',
    './acdc.py',
]
train_dataloader = dict(
    batch_size=2,
    num_workers=2,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset={{_base_.train_cityscapes}},
)
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='ConcatDataset',
        datasets=[
            {{_base_.val_night_acdc}},
            {{_base_.val_fog_acdc}},
            {{_base_.val_snow_acdc}},
            {{_base_.val_rain_acdc}},
        ],
    ),
)
test_dataloader = val_dataloader
# Each image goes to the first key found in its path; <key>_mIoU per target, mean_mIoU over
# mean_used_keys.
val_evaluator = dict(
    type='DGIoUMetric',
    iou_metrics=['mIoU'],
    dataset_keys=['night/', 'fog/', 'snow/', 'rain/'],
    mean_used_keys=['night/', 'fog/', 'snow/', 'rain/'],
)
test_evaluator = val_evaluator
