# Loader and evaluator settings shared by every dg_*.py source -> targets split: each split
# adds its `dataset`s and the DGIoUMetric's `dataset_keys` / `mean_used_keys`.
train_dataloader = dict(
    batch_size=2,
    num_workers=2,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
)
test_dataloader = val_dataloader
# Each image goes to the first key found in its path; <key>_mIoU per target, mean_mIoU over
# mean_used_keys.
val_evaluator = dict(type='DGIoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
