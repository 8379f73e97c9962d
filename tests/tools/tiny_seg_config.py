# A tiny SoMA segmentor for the tool tests: 4-block DINOv2 (embed 64, 64 px), adapters on
# blocks 2 and 3 (r 4, alpha 8 -> s = 2), an FCN head. No datasets.
default_scope = 'mmseg'
custom_imports = dict(imports=['soma'], allow_failed_imports=False)
cpu_threads = 1  # a tiny model: one torch thread (soma.apis.launch.cpu_thread_count)
crop_size = (64, 64)
model = dict(
    type='PEFTBackboneEncoderDecoder',
    data_preprocessor=dict(
        type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375], size=crop_size, bgr_to_rgb=True, pad_val=0,
        seg_pad_val=255),
    backbone=dict(
        type='DinoVisionTransformer', img_size=64, patch_size=16, embed_dim=64, depth=4,
        num_heads=2, out_indices=[0, 1, 2, 3], init_cfg=None,
        lora_cfg=dict(type='sora', r=4, lora_alpha=8, lora_dropout=0.0, first_eigen=False,
                      lora_weight_init='sora',
                      target_modules=['q', 'k', 'v', 'proj', 'fc1', 'fc2'],
                      start_lora_idx=2, rank_ramp=False, bias='all')),
    decode_head=dict(
        type='FCNHead', in_channels=64, in_index=3, channels=16, num_convs=1,
        concat_input=False, dropout_ratio=0.0, num_classes=19,
        norm_cfg=dict(type='BN', requires_grad=True), align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(64, 64), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
tta_model = dict(type='SegTTAModel')
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale_factor=r, keep_ratio=True) for r in (0.75, 1.0)],
        [dict(type='RandomFlip', prob=0., direction='horizontal'),
         dict(type='RandomFlip', prob=1., direction='horizontal')],
        [dict(type='LoadAnnotations')],
        [dict(type='PackSegInputs')]]),
]
