# Baseline: DoRA (LoRA + a trained magnitude per output row),
# injected by `peft`. DINOv2-L + Mask2Former, GTAV -> Cityscapes, BDD100K, Mapillary: the
# SoMA recipe (crop 512, batch 4, 40k iterations, AdamW, backbone lr x0.5, EMA from 12k) with
# the method in its standard form: every block adapted (start_lora_idx=0), constant weight
# decay. Rank 16, alpha 16, SoMA's targets. See docs/peft_baselines.md.
# (LoRA's config with use_dora=True.)
_base_ = ['./lora_dinov2-L_mask2former.py']
model = dict(backbone=dict(peft_cfg=dict(use_dora=True)))
