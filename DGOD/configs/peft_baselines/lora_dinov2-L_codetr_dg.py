# Baseline: LoRA, injected by `peft`, DINOv2-L + Co-DETR, Diverse Weather (train on
# daytime clear; test on DS / NC / DR / NR / DF), the SoMA recipe of
# ../soma/soma_dinov2-L_codetr_dg.py with the method in its standard form: every block
# adapted, constant weight decay. Rank 16, SoMA's targets.
# Paper (mAP): 69.6 / 59.6 / 58.1 / 46.1 / 49.5.
_base_ = ['../soma/soma_dinov2-L_codetr_dg.py']
model = dict(
    backbone=dict(
        lora_cfg=None,
        peft_cfg=dict(
            type='LoraConfig', r=16, lora_alpha=16, lora_dropout=0.0,
            init_lora_weights=True, use_dora=False, bias='none',
            target_modules=['q', 'k', 'v', 'proj', 'fc1', 'fc2'], start_lora_idx=0)))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=False, begin=0, end=1500),
    dict(type='MultiStepLR', begin=1500, end={{_base_.max_iters}}, by_epoch=False,
         milestones=[24000, 32000], gamma=0.1),
]
