# The ACDC test split (fog, night, rain, snow; no labels) for the Cityscapes -> ACDC model
# (paper: 78.75 mIoU on the ACDC test server). Writes the submission, no metric:
#   python tools/test.py configs/soma/soma_dinov2_mask2former_ACDC_1024x1024_bs4x2_acdc_test.py \
#       CHECKPOINT --submit work_dirs/acdc_test_submission
# -> one label-id PNG per test image in work_dirs/acdc_test_submission/ and
#    work_dirs/acdc_test_submission.zip, to upload to the ACDC server.
_base_ = ['./soma_dinov2_mask2former_ACDC_1024x1024_bs4x2.py']
test_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='ConcatDataset',
        datasets=[
            {{_base_.test_fog_acdc}},
            {{_base_.test_night_acdc}},
            {{_base_.test_rain_acdc}},
            {{_base_.test_snow_acdc}},
        ],
    ),
)
# only tools/test.py --submit DIR (and/or --out DIR) can test this split: nothing to compare to
test_evaluator = dict(_delete_=True, type='SegPredictionWriter')
