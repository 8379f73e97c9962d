# GTAV + Synthia + UrbanSyn -> Cityscapes, BDD100K, Mapillary (crop 1024).
_base_ = [
    './gta_1024x1024.py',
    './synthia_1024x1024.py',
    './urbansyn_1024x1024.py',
    './cityscapes_1024x1024.py',
    './bdd100k_1024x1024.py',
    './mapillary_1024x1024.py',
    './dg_loaders.py',
]
train_dataloader = dict(
    dataset=dict(
        type='ConcatDataset',
        datasets=[
            {{_base_.train_gta}},
            {{_base_.train_syn}},
            {{_base_.train_ur}},
        ],
    ),
)
val_dataloader = dict(
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
val_evaluator = dict(
    dataset_keys=['citys', 'map', 'bdd'],
    mean_used_keys=['citys', 'map', 'bdd'],
)
test_evaluator = val_evaluator
