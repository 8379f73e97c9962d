# SoMA, DINOv2-L + Mask2Former, G+S+U 1024 model fine-tuned on 1/16 of Cityscapes ->
# Cityscapes, BDD100K, Mapillary, crop 1024, batch 4, lr 1e-5, 4k iterations, val every 400.
# Paper: mIoU avg 75.50.
# `load_from`: the G+S+U 1024 model, e.g. your own run of
# soma_dinov2-L_mask2former_gsu2cbm_1024x1024.py or the released adapter merged with
# tools/merge_soma_weights.py (README); override with --cfg-options load_from=PATH.
_base_ = [
    '../_base_/datasets/dg_c16_2cbm_1024x1024.py',
    '../_base_/default_runtime.py',
    '../_base_/models/dinov2_mask2former.py',
    '../_base_/schedules/soma_40k.py',
]
load_from = 'checkpoints/merged_checkpoints/soma_dinov2-L_gsu2cbm_1024x1024_best.pth'
crop_size = (1024, 1024)
max_iters = 4000
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        img_size=1024,
        init_cfg=dict(checkpoint='checkpoints/dinov2_sora_converted_1024x1024.pth')),
    test_cfg=dict(crop_size=crop_size, stride=(683, 683)),
)
train_dataloader = dict(batch_size=4)
optim_wrapper = dict(optimizer=dict(lr=1e-5))
param_scheduler = [
    dict(type='PolyLR', eta_min=0, power=0.9, begin=0, end=max_iters, by_epoch=False),
    dict(type='CosineAnnealingParamScheduler', param_name='weight_decay', eta_min=1e-5,
         begin=0, end=max_iters, by_epoch=False),
]
train_cfg = dict(max_iters=max_iters, val_interval=400)
default_hooks = dict(checkpoint=dict(interval=400, max_keep_ckpts=7))
