# DINOv2-L (patch 16 after conversion) adapted with SoMA (`lora_cfg`), in a
# PEFTBackboneEncoderDecoder: the part every segmentation model base shares (the heads are
# added by dinov2_mask2former.py / dinov2_semfpn.py). Baselines override `type` and set
# `backbone.lora_cfg=None`.
crop_size = (512, 512)
model = dict(
    type='PEFTBackboneEncoderDecoder',
    data_preprocessor=dict(
        type='SegDataPreProcessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        size=crop_size,
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255,
    ),
    backbone=dict(
        type='DinoVisionTransformer',
        img_size=512,
        patch_size=16,
        embed_dim=1024,
        depth=24,
        num_heads=16,
        mlp_ratio=4,
        ffn_layer='mlp',
        init_values=1e-05,
        block_chunks=0,
        qkv_bias=True,
        proj_bias=True,
        ffn_bias=True,
        out_indices=[7, 11, 15, 23],
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/dinov2_sora_converted.pth'),
        # SoMA ("sora" in the release): the r=16 minor singular components of q, k, v, proj,
        # fc1, fc2 train in blocks >= 8; blocks 0..7 stay frozen. This project runs the SVD on
        # the pretrained weights; add svd_init_on='construction' to reproduce the release.
        lora_cfg=dict(
            type='sora',
            r=16,
            lora_alpha=16,
            lora_dropout=0.0,
            first_eigen=False,
            lora_weight_init='sora',
            target_modules=['q', 'k', 'v', 'proj', 'fc1', 'fc2'],
            start_lora_idx=8,
            rank_ramp=False,
            bias='all',
            merge_weights=False,
            fan_in_fan_out=False,
            modules_to_save=None,
        ),
    ),
)
