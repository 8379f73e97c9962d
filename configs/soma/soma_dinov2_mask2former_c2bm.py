# SoMA, DINOv2-L + Mask2Former, Cityscapes -> BDD100K, Mapillary, crop 512, batch 8,
# 40k iterations; as the release: linear warm-up over 1.5k iterations from lr x0.01, then poly,
# EMA from 20k. Paper: mIoU avg 71.74.
_base_ = [
    '../_base_/datasets/dg_citys2bm_512x512.py',
    '../_base_/default_runtime.py',
    '../_base_/models/dinov2_mask2former.py',
    '../_base_/schedules/soma_40k.py',
]
train_dataloader = dict(batch_size=8)
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
    dict(type='EMAHook', begin_iter=20000, priority='NORMAL'),
]
auto_scale_lr = dict(enable=False, base_batch_size=8)  # release: 1 GPU x 8
