# DINOv2-L + Semantic FPN (FPN neck, FPNHead), adapted with SoMA: the backbone and data
# preprocessor come from dinov2_l_soma.py.
_base_ = ['./dinov2_l_soma.py']
crop_size = (512, 512)
num_classes = 19
norm_cfg = dict(type='SyncBN', requires_grad=True)  # reverted to BN by the Runner off-dist
model = dict(
    neck=dict(type='FPN', in_channels=[1024, 1024, 1024, 1024], out_channels=256, num_outs=4),
    decode_head=dict(
        type='FPNHead',
        in_channels=[256, 256, 256, 256],
        in_index=[0, 1, 2, 3],
        feature_strides=[4, 8, 16, 32],
        channels=128,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    # slide_batch_size: windows per forward (BatchedSlideEncoderDecoder); None = mmseg's
    # one window position at a time, same predictions within float rounding
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341), slide_batch_size=8),
)
