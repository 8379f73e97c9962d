# Cityscapes -> ACDC val (night, fog, snow, rain; crop 1024); mean over the four conditions.
_base_ = [
    './cityscapes_1024x1024.py',
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
        ],
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(
    dataset_keys=['night/', 'fog/', 'snow/', 'rain/'],
    mean_used_keys=['night/', 'fog/', 'snow/', 'rain/'],
)
test_evaluator = val_evaluator
