# Ablation (weight decay): constant weight decay 0.05 (no annealing), SoMA otherwise.
_base_ = ['../soma/soma_dinov2-L_mask2former.py']
param_scheduler = [
    dict(type='PolyLR', eta_min=0, power=0.9, begin=0, end=40000, by_epoch=False),
]
