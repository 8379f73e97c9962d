# Example: SoMA on SigLIP2's vision tower (transformers' Siglip2VisionModel; the folder of
# google/siglip2-base-patch16-naflex, an image-text model, works too: its text part is not
# loaded), ViT-B/16 (width 768, 12 blocks), with the recipe of soma_dinov2-L_mask2former.py.
# No CLS token; learned position embeddings resized by transformers to each input.
# For another depth the first third of the blocks is frozen (start_lora_idx = 12 // 3).
_base_ = ['./soma_dinov2-L_mask2former.py']
model = dict(
    backbone=dict(
        _delete_=True,
        type='HFVisionBackbone',
        model='checkpoints/siglip2-base-patch16-naflex',
        out_indices=[3, 5, 7, 11],
        lora_cfg=dict(
            type='soma', r=16, lora_alpha=16, lora_dropout=0.0, lora_weight_init='soma',
            target_modules=['q_proj', 'k_proj', 'v_proj', 'out_proj', 'fc1', 'fc2'],
            layers_pattern='layers', start_lora_idx=4, bias='all'),
    ),
    decode_head=dict(in_channels=[768, 768, 768, 768]),
)
