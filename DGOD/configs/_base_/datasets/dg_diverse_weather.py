# Diverse Weather DG detection: train on daytime_clear, validate/test on the five domains
# (daytime_clear test.txt; Night-Sunny, dusk_rainy, night_rainy, daytime_foggy train.txt),
# VOC mAP (11 points) per domain and their mean.
_base_ = [
    './daytime_clear.py',
    './night_sunny.py',
    './dusk_rainy.py',
    './night_rainy.py',
    './daytime_foggy.py',
]
train_dataloader = dict(
    batch_size=2,
    num_workers=2,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset={{_base_.train_dc}})
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='ConcatDataset',
        datasets=[
            {{_base_.test_dc}},
            {{_base_.test_ns}},
            {{_base_.test_dr}},
            {{_base_.test_nr}},
            {{_base_.test_df}},
        ]))
test_dataloader = val_dataloader
val_evaluator = dict(
    type='DGVOCMetric',
    metric='mAP',
    eval_mode='11points',
    dataset_keys=['daytime_clear', 'Night-Sunny', 'dusk_rainy', 'night_rainy', 'daytime_foggy'])
test_evaluator = val_evaluator
