# Ablation (frozen blocks): adapters from block 12 on (blocks 0..11 frozen; SoMA: 8).
_base_ = ['../soma/soma_dinov2-L_mask2former.py']
model = dict(backbone=dict(lora_cfg=dict(start_lora_idx=12)))
