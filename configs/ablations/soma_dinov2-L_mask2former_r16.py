# Ablation (rank): r = lora_alpha = 16 (scale 1 as in SoMA; SoMA: 16).
_base_ = ['../soma/soma_dinov2-L_mask2former.py']
model = dict(backbone=dict(lora_cfg=dict(r=16, lora_alpha=16)))
