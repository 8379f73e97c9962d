# SoMA, DINOv3-L/16 + Mask2Former, GTAV -> Cityscapes, BDD100K, Mapillary: the recipe of
# soma_dinov2-L_mask2former.py (crop 512, batch 4, 40k iterations, EMA from 12k) with the
# backbone swapped for transformers' DINOv3ViTModel (HFVisionBackbone, blocks 0..7 of 24
# frozen); weights and their conversion: ../_base_/models/dinov3_mask2former.py.
_base_ = [
    '../_base_/datasets/dg_gta_512x512.py',
    '../_base_/default_runtime.py',
    '../_base_/models/dinov3_mask2former.py',
    '../_base_/schedules/soma_40k.py',
]
train_dataloader = dict(batch_size=4)
custom_hooks = [
    dict(type='WeightDecayLoggingHook', interval=50),
    dict(type='SoMAMetaHook'),
    dict(type='MergeAdaptersHook'),  # validate/test merged; weights restored exactly
    dict(type='EMAHook', begin_iter=12000, priority='NORMAL'),
]
