# Ablation (components): r singular components at random (seeded) indices with SoMA's
# recipe otherwise ('sora_random', soma/peft/svd.py random_components).
_base_ = ['../soma/soma_dinov2-L_mask2former.py']
model = dict(backbone=dict(lora_cfg=dict(lora_weight_init='sora_random')))
