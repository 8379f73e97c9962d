# Baseline: full fine-tuning of DINOv2-L with norms, layer scales, position and patch
# embeddings frozen (release: configs/fft_vfms/dinov2-L_mask2former.py), backbone lr x0.01.
# GTAV -> Cityscapes, BDD100K, Mapillary, crop 512, batch 4, 40k iterations, poly LR,
# constant weight decay.
_base_ = [
    '../_base_/datasets/dg_gta_512x512.py',
    '../_base_/default_runtime.py',
    '../_base_/models/dinov2_mask2former.py',
    '../_base_/schedules/soma_40k.py',
]
model = dict(type='FrozenNSEncoderDecoder', backbone=dict(lora_cfg=None))
train_dataloader = dict(batch_size=4)
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys=dict(backbone=dict(lr_mult=0.01, decay_mult=1.0))))
param_scheduler = [
    dict(type='PolyLR', eta_min=0, power=0.9, begin=0, end=40000, by_epoch=False),
]
