# SoMA, DINOv2-L + Mask2Former, Cityscapes -> ACDC, crop 1024, batch 2 per GPU x 4 GPUs,
# 40k iterations: linear warm-up over 10k iterations (start factor 1e-6), then poly;
# EMA from 20k. Paper: mIoU 78.75 on the ACDC test set (server); val reports the four
# conditions and their mean.
_base_ = [
    '../_base_/datasets/dg_citys2acdc_1024x1024.py',
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
train_dataloader = dict(batch_size=2)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, begin=0, end=10000, by_epoch=False),
    dict(type='PolyLR', eta_min=0.0, power=0.9, begin=10000, end=40000, by_epoch=False),
    dict(type='CosineAnnealingParamScheduler', param_name='weight_decay', eta_min=1e-5,
         begin=0, end=40000, by_epoch=False),
]
default_hooks = dict(checkpoint=dict(max_keep_ckpts=8))
custom_hooks = [
    dict(type='WeightDecayLoggingHook', interval=50),
    dict(type='SoMAMetaHook'),
    dict(type='MergeAdaptersHook'),  # validate/test merged; weights restored exactly
    dict(type='EMAHook', begin_iter=20000, priority='NORMAL'),
]
auto_scale_lr = dict(enable=False, base_batch_size=8)  # release: 4 GPUs x 2
