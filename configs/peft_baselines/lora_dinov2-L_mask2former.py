# Baseline: LoRA (Kaiming A, zero B),
# injected by `peft`. DINOv2-L + Mask2Former, GTAV -> Cityscapes, BDD100K, Mapillary: the
# SoMA recipe (crop 512, batch 4, 40k iterations, AdamW, backbone lr x0.5, EMA from 12k) with
# the method in its standard form: every block adapted (start_lora_idx=0), constant weight
# decay. Rank 16, alpha 16, SoMA's targets. See docs/peft_baselines.md.
_base_ = ['../soma/soma_dinov2-L_mask2former.py']
model = dict(
    backbone=dict(
        lora_cfg=None,
        peft_cfg=dict(
            type='LoraConfig', r=16, lora_alpha=16, lora_dropout=0.0,
            init_lora_weights=True, use_dora=False, bias='none',
            target_modules=['q', 'k', 'v', 'proj', 'fc1', 'fc2'], start_lora_idx=0)))
param_scheduler = [
    dict(type='PolyLR', eta_min=0, power=0.9, begin=0, end=40000, by_epoch=False),
]
