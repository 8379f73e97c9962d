# SoMA, DINOv2-L + Semantic FPN, GTAV -> Cityscapes, BDD100K, Mapillary, crop 512, batch 4,
# 40k iterations, EMA from 12k (the Mask2Former recipe with the release's Semantic-FPN head).
_base_ = [
    '../_base_/datasets/dg_gta_512x512.py',
    '../_base_/default_runtime.py',
    '../_base_/models/dinov2_semfpn.py',
    '../_base_/schedules/soma_40k.py',
]
train_dataloader = dict(batch_size=4)
custom_hooks = [
    dict(type='WeightDecayLoggingHook', interval=50),
    dict(type='SoMAMetaHook'),
    dict(type='MergeAdaptersHook'),  # validate/test merged; weights restored exactly
    dict(type='EMAHook', begin_iter=12000, priority='NORMAL'),
]
