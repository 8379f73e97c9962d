# Baseline: DoRA, injected by `peft`, DINOv2-L + Co-DETR, Diverse Weather (train on
# daytime clear; test on DS / NC / DR / NR / DF), the SoMA recipe of
# ../soma/soma_dinov2-L_codetr_dg.py with the method in its standard form: every block
# adapted, constant weight decay. Rank 16, SoMA's targets.
# Paper (mAP): 69.0 / 58.7 / 58.0 / 45.0 / 48.9.
# (LoRA's config with use_dora=True.)
_base_ = ['./lora_dinov2-L_codetr_dg.py']
model = dict(backbone=dict(peft_cfg=dict(use_dora=True)))
