# Cityscapes -> BDD100K, Mapillary (crop 512).
_base_ = [
    './cityscapes_512x512.py',
    './bdd100k_512x512.py',
    './mapillary_512x512.py',
    './dg_loaders.py',
]
train_dataloader = dict(
    dataset={{_base_.train_cityscapes}},
)
val_dataloader = dict(
    dataset=dict(
        type='ConcatDataset',
        datasets=[
            {{_base_.val_bdd}},
            {{_base_.val_mapillary}},
        ],
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(
    dataset_keys=['map', 'bdd'],
    mean_used_keys=['map', 'bdd'],
)
test_evaluator = val_evaluator
