# Cityscapes -> ACDC val (night, fog, snow, rain; crop 512) and Cityscapes val; mean over the
# four ACDC conditions.
_base_ = [
    './cityscapes_512x512.py',
    './acdc.py',
    './dg_loaders.py',
]
train_dataloader = dict(
    dataset={{_base_.train_cityscapes}},
)
val_dataloader = dict(
    dataset=dict(
        type='ConcatDataset',
        datasets=[
            {{_base_.val_night_acdc}},
            {{_base_.val_fog_acdc}},
            {{_base_.val_snow_acdc}},
            {{_base_.val_rain_acdc}},
            {{_base_.val_cityscapes}},
        ],
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(
    dataset_keys=['night/', 'fog/', 'snow/', 'rain/', 'cityscapes/'],
    mean_used_keys=['night/', 'fog/', 'snow/', 'rain/'],
)
test_evaluator = val_evaluator
