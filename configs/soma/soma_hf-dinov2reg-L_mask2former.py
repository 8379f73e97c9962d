# Example: SoMA on transformers' Dinov2WithRegistersModel (facebook/dinov2-with-registers-large,
# patch 14, 4 register tokens, dropped from the maps like the CLS token); otherwise as
# soma_hf-dinov2-L_mask2former.py.
_base_ = ['./soma_hf-dinov2-L_mask2former.py']
model = dict(backbone=dict(model='checkpoints/dinov2-with-registers-large'))
