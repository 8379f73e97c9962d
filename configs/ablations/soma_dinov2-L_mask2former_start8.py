# Ablation (frozen blocks): adapters from block 8 on (blocks 0..7 frozen; SoMA: 8).
_base_ = ['../soma/soma_dinov2-L_mask2former.py']
model = dict(backbone=dict(lora_cfg=dict(start_lora_idx=8)))
