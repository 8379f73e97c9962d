# DINOv3-L/16 (transformers' DINOv3ViTModel through HFVisionBackbone) + Mask2Former, adapted
# with SoMA: dinov2_mask2former.py with the backbone swapped (same heads, preprocessor and
# test settings). Patch 16 and RoPE: no conversion per resolution, no img_size.
# Weights (Meta's DINOv3 License): a transformers folder, either downloaded
# (facebook/dinov3-vitl16-pretrain-lvd1689m) or converted from the official .pth:
#   python tools/convert_models/convert_dinov3.py \
#       checkpoints/dinov3_vitl16_pretrain_lvd1689m-<hash>.pth \
#       checkpoints/dinov3-vitl16-pretrain-lvd1689m --arch vitl16
_base_ = ['./dinov2_mask2former.py']
model = dict(
    backbone=dict(
        _delete_=True,
        type='HFVisionBackbone',
        model='checkpoints/dinov3-vitl16-pretrain-lvd1689m',
        out_indices=[7, 11, 15, 23],
        gradient_checkpointing=False,
        # SoMA r=16 on every linear of blocks 8..23 (blocks 0..7 of 24 frozen), SVD of the
        # pretrained weights
        lora_cfg=dict(
            type='soma',
            r=16,
            lora_alpha=16,
            lora_dropout=0.0,
            first_eigen=False,
            lora_weight_init='soma',
            target_modules=['q_proj', 'k_proj', 'v_proj', 'o_proj', 'up_proj', 'down_proj'],
            layers_pattern='layer',
            start_lora_idx=8,
            rank_ramp=False,
            bias='all',
            merge_weights=False,
            fan_in_fan_out=False,
            modules_to_save=None,
        ),
    ),
)
