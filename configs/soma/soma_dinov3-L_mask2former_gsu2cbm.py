# SoMA, DINOv3-L/16 + Mask2Former, GTAV + Synthia + UrbanSyn -> Cityscapes, BDD100K,
# Mapillary: the recipe of soma_dinov2-L_mask2former_gsu2cbm.py (crop 512, batch 4, 40k
# iterations, no EMA) with the DINOv3-L backbone of ../_base_/models/dinov3_mask2former.py.
_base_ = [
    '../_base_/datasets/dg_gsu2cbm_512x512.py',
    '../_base_/default_runtime.py',
    '../_base_/models/dinov3_mask2former.py',
    '../_base_/schedules/soma_40k.py',
]
train_dataloader = dict(batch_size=4)
