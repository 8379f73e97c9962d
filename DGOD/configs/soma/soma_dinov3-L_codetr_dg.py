# SoMA, DINOv3-L/16 + Co-DETR (Co-DINO), Diverse Weather: the recipe of
# soma_dinov2-L_codetr_dg.py (train on daytime_clear, test on DS / NC / DR / NR / DF, input
# 1024x1024, batch 2 per GPU x 4 GPUs, 40k iterations) with the backbone swapped for
# transformers' DINOv3ViTModel (HFVisionBackbone): SoMA r=16 on every linear of blocks
# 8..23 (blocks 0..7 of 24 frozen). Patch 16 and RoPE: no conversion per resolution.
# Weights (Meta's DINOv3 License): a transformers folder, either downloaded
# (facebook/dinov3-vitl16-pretrain-lvd1689m) or converted from the official .pth:
#   python tools/convert_models/convert_dinov3.py \
#       checkpoints/dinov3_vitl16_pretrain_lvd1689m-<hash>.pth \
#       checkpoints/dinov3-vitl16-pretrain-lvd1689m --arch vitl16
_base_ = ['./soma_dinov2-L_codetr_dg.py']
rank = 16
model = dict(
    backbone=dict(
        _delete_=True,
        type='HFVisionBackbone',
        model='checkpoints/dinov3-vitl16-pretrain-lvd1689m',
        out_indices=[7, 11, 15, 23],
        gradient_checkpointing=False,
        lora_cfg=dict(
            type='soma',
            r=rank,
            lora_alpha=rank,
            lora_dropout=0.0,
            first_eigen=False,
            lora_weight_init='soma',
            target_modules=['q_proj', 'k_proj', 'v_proj', 'o_proj', 'up_proj', 'down_proj'],
            layers_pattern='layer',
            start_lora_idx=8,
            bias='all')))
