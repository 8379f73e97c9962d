# GTAV -> Cityscapes, BDD100K, Mapillary (crop 512).
_base_ = [
    './gta_512x512.py',
    './cityscapes_512x512.py',
    './bdd100k_512x512.py',
    './mapillary_512x512.py',
]
train_dataloader = dict(
    batch_size=2,
    num_workers=2,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset={{_base_.train_gta}},
)
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='ConcatDataset',
        datasets=[
            {{_base_.val_cityscapes}},
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
    dataset_keys=['citys', 'map', 'bdd'],
    mean_used_keys=['citys', 'map', 'bdd'],
)
test_evaluator = val_evaluator
