# SoMA, DINOv2-L + Mask2Former, Cityscapes -> ACDC, crop 512 out of the 1024-scale training
# images, batch 2 per GPU x 4 GPUs, warm-up 10k (start factor 1e-6) then poly, EMA from 20k
# (a release config without a published number).
_base_ = [
    '../_base_/datasets/dg_citys2acdc_1024x1024.py',
    '../_base_/default_runtime.py',
    '../_base_/models/dinov2_mask2former.py',
    '../_base_/schedules/soma_40k.py',
]
crop_size = (512, 512)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomChoiceResize', scales=[int(1024 * x * 0.1) for x in range(5, 21)],
         resize_type='ResizeShortestEdge', max_size=4096),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))
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
