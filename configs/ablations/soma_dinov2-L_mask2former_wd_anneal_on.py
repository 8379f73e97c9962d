# Ablation (weight decay): cosine-annealed weight decay 0.05 -> 1e-5, i.e. SoMA itself.
_base_ = ['../soma/soma_dinov2-L_mask2former.py']
