# Example: SoMA on transformers' Dinov2Model (facebook/dinov2-large, patch 14) with the recipe
# of soma_dinov2-L_mask2former.py. Inputs are zero-padded at the bottom/right to a multiple of
# 14 (pad_to_patch); the learned position embeddings are interpolated by transformers.
# For the registers variant (facebook/dinov2-with-registers-large) only the folder changes:
# HFVisionBackbone reads the model type from its config.json.
_base_ = ['./soma_dinov2-L_mask2former.py']
model = dict(
    backbone=dict(
        _delete_=True,
        type='HFVisionBackbone',
        model='checkpoints/dinov2-large',
        out_indices=[7, 11, 15, 23],
        pad_to_patch=True,
        lora_cfg=dict(
            type='soma', r=16, lora_alpha=16, lora_dropout=0.0, lora_weight_init='soma',
            target_modules=['q_proj', 'k_proj', 'v_proj', 'o_proj', 'fc1', 'fc2'],
            layers_pattern='layer', start_lora_idx=8, bias='all'),
    ),
)
