# SoMA, DINOv3-L/16 + Mask2Former, GTAV + Synthia + UrbanSyn -> Cityscapes, BDD100K,
# Mapillary at crop 1024: the recipe of soma_dinov2-L_mask2former_gsu2cbm_1024x1024.py
# (batch 4, 40k iterations, EMA from 16k, slide stride 683) with the DINOv3-L backbone of
# ../_base_/models/dinov3_mask2former.py. RoPE: the same weights folder at every resolution.
_base_ = [
    '../_base_/datasets/dg_gsu2cbm_1024x1024.py',
    '../_base_/default_runtime.py',
    '../_base_/models/dinov3_mask2former.py',
    '../_base_/schedules/soma_40k.py',
]
crop_size = (1024, 1024)
model = dict(
    data_preprocessor=dict(size=crop_size),
    test_cfg=dict(crop_size=crop_size, stride=(683, 683)),
)
train_dataloader = dict(batch_size=4)
custom_hooks = [
    dict(type='WeightDecayLoggingHook', interval=50),
    dict(type='SoMAMetaHook'),
    dict(type='MergeAdaptersHook'),  # validate/test merged; weights restored exactly
    dict(type='EMAHook', begin_iter=16000, priority='NORMAL'),
]
