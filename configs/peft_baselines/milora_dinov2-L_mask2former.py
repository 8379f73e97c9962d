# Baseline: MiLoRA (the r minor singular components, as SoMA, but every block adapted and a
# constant weight decay), expressed with SoMA's own lora_cfg. DINOv2-L + Mask2Former,
# GTAV -> Cityscapes, BDD100K, Mapillary, the SoMA recipe otherwise. Rank 16, SoMA's targets.
_base_ = ['../soma/soma_dinov2-L_mask2former.py']
model = dict(backbone=dict(lora_cfg=dict(start_lora_idx=0, first_eigen=False)))
param_scheduler = [
    dict(type='PolyLR', eta_min=0, power=0.9, begin=0, end=40000, by_epoch=False),
]
