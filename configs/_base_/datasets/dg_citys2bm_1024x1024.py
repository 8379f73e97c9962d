# Cityscapes -> BDD100K, Mapillary (crop 1024).
_base_ = [
    './cityscapes_1024x1024.py',
    './bdd100k_1024x1024.py',
    './mapillary_1024x1024.py',
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
            {{_base_.val_bdd}},
            {{_base_.val_mapillary}},
        ],
    ),
)
test_dataloader = val_dataloader
# Each image goes to the first key found in its path; <key>_mIoU per target, mean_mIoU over
# mean_used_keys.
val_evaluator = dict(
    type='DGIoUMetric',
    iou_metrics=['mIoU'],
    dataset_keys=['map', 'bdd'],
    mean_used_keys=['map', 'bdd'],
)
test_evaluator = val_evaluator
