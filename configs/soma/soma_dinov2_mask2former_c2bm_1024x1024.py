# SoMA, DINOv2-L + Mask2Former, Cityscapes -> BDD100K, Mapillary, crop 1024, batch 4,
# 40k iterations, warm-up 1.5k from lr x0.01 then poly, EMA from 16k (a release config
# without a published number).
_base_ = [
    '../_base_/datasets/dg_citys2bm_1024x1024.py',
    '../_base_/default_runtime.py',
    '../_base_/models/dinov2_mask2former.py',
    '../_base_/schedules/soma_40k.py',
]
crop_size = (1024, 1024)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        img_size=1024,
        init_cfg=dict(checkpoint='checkpoints/dinov2_sora_converted_1024x1024.pth')),
    test_cfg=dict(crop_size=crop_size, stride=(683, 683)),
)
train_dataloader = dict(batch_size=4)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, begin=0, end=1500, by_epoch=False),
    dict(type='PolyLR', eta_min=0, power=0.9, begin=1500, end=40000, by_epoch=False),
    dict(type='CosineAnnealingParamScheduler', param_name='weight_decay', eta_min=1e-5,
         begin=0, end=40000, by_epoch=False),
]
custom_hooks = [
    dict(type='WeightDecayLoggingHook', interval=50),
    dict(type='SoMAMetaHook'),
    dict(type='MergeAdaptersHook'),  # validate/test merged; weights restored exactly
    dict(type='EMAHook', begin_iter=16000, priority='NORMAL'),
]
