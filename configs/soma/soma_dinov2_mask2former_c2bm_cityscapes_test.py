# The Cityscapes test split (1525 images, no labels) for the Cityscapes-trained model
# (soma_dinov2_mask2former_c2bm.py). Writes the submission, no metric:
#   python tools/test.py configs/soma/soma_dinov2_mask2former_c2bm_cityscapes_test.py \
#       CHECKPOINT --submit work_dirs/cityscapes_test_submission
# -> one label-id PNG per test image in work_dirs/cityscapes_test_submission/ and
#    work_dirs/cityscapes_test_submission.zip, to upload to the Cityscapes server.
_base_ = ['./soma_dinov2_mask2former_c2bm.py']
test_dataloader = dict(
    dataset=dict(_delete_=True, type='ConcatDataset', datasets=[{{_base_.test_cityscapes}}]))
# only tools/test.py --submit DIR (and/or --out DIR) can test this split: nothing to compare to
test_evaluator = dict(_delete_=True, type='SegPredictionWriter')
