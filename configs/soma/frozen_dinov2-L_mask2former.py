# Baseline: frozen DINOv2-L, only the Mask2Former head trains (release:
# configs/frozen_vfms/dinov2-L_mask2former.py). GTAV -> Cityscapes, BDD100K, Mapillary,
# crop 512, batch 4, 40k iterations, poly LR, constant weight decay, val every 10k.
_base_ = [
    '../_base_/datasets/dg_gta_512x512.py',
    '../_base_/default_runtime.py',
    '../_base_/models/dinov2_mask2former.py',
    '../_base_/schedules/soma_40k.py',
]
model = dict(type='FrozenBackboneEncoderDecoder', backbone=dict(lora_cfg=None))
train_dataloader = dict(batch_size=4)
param_scheduler = [
    dict(type='PolyLR', eta_min=0, power=0.9, begin=0, end=40000, by_epoch=False),
]
train_cfg = dict(val_interval=10000)
default_hooks = dict(checkpoint=dict(interval=10000, max_keep_ckpts=4))
