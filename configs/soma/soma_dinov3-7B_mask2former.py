# SoMA, DINOv3-7B/16 + Mask2Former, GTAV -> Cityscapes, BDD100K, Mapillary: the recipe of
# soma_dinov3-L_mask2former.py (crop 512, batch 4, 40k iterations, EMA from 12k) on
# transformers' DINOv3ViTModel 7B (40 blocks, width 4096, 32 heads, SwiGLU 8192).
# The 6.7B frozen weights are held in bfloat16 (13.4 GB) and every block is recomputed in
# the backward pass (activation checkpointing): per-GPU memory in docs/benchmarks.md
# ("DINOv3-7B memory"). SoMA r=16 on every linear of blocks 13..39 (the first third,
# blocks 0..12, frozen): 30.7M trainable parameters, created by soma.peft in the weights'
# dtype (bfloat16). Weights (Meta's DINOv3 License): the transformers folder
# facebook/dinov3-vit7b16-pretrain-lvd1689m, or the official .pth converted with
#   python tools/convert_models/convert_dinov3.py \
#       checkpoints/dinov3_vit7b16_pretrain_lvd1689m-<hash>.pth \
#       checkpoints/dinov3-vit7b16-pretrain-lvd1689m --arch vit7b16
_base_ = ['./soma_dinov3-L_mask2former.py']
model = dict(
    backbone=dict(
        model='checkpoints/dinov3-vit7b16-pretrain-lvd1689m',
        out_indices=[9, 19, 29, 39],
        dtype='bfloat16',
        gradient_checkpointing=True,
        lora_cfg=dict(
            target_modules=['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj',
                            'down_proj'],
            start_lora_idx=13),
    ),
    decode_head=dict(in_channels=[4096] * 4),
)
