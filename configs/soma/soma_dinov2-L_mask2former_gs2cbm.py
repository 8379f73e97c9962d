# SoMA, DINOv2-L + Mask2Former, GTAV + Synthia -> Cityscapes, BDD100K, Mapillary, crop 512,
# batch 4, 40k iterations, no EMA. Paper: mIoU avg 69.26.
_base_ = [
    '../_base_/datasets/dg_gs2cbm_512x512.py',
    '../_base_/default_runtime.py',
    '../_base_/models/dinov2_mask2former.py',
    '../_base_/schedules/soma_40k.py',
]
train_dataloader = dict(batch_size=4)
