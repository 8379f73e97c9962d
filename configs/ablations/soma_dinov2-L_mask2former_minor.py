# Ablation (components): minor singular components, i.e. SoMA itself (paper: 68.27 mIoU).
_base_ = ['../soma/soma_dinov2-L_mask2former.py']
