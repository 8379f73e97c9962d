# Ablation (components): principal singular components (PiSSA-style) with SoMA's
# recipe otherwise (block freezing, annealed weight decay).
_base_ = ['../soma/soma_dinov2-L_mask2former.py']
model = dict(backbone=dict(lora_cfg=dict(first_eigen=True)))
