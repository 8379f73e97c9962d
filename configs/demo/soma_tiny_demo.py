# SoMA demo: a tiny DINOv2-style ViT + a tiny Mask2Former head, trained on the synthetic
# source domain ('gta', GTAV layout) and evaluated on two shifted targets ('fog', 'night',
# Cityscapes layout) made by soma.datasets.make_synthetic_dg_benchmark (tools/demo.py).
# Same recipe as the released configs, scaled down for a CPU: AdamW, backbone lr x0.5,
# no decay on norms/queries/embeddings, poly lr, weight decay annealed 0.05 -> 1e-5 (cosine),
# SoMA on the last blocks (start_lora_idx=2 of 4: blocks 0-1 frozen), DGIoUMetric.
custom_imports = dict(imports=['soma'], allow_failed_imports=False)
default_scope = 'mmseg'

data_root = 'work_dirs/demo/data'
crop_size = (96, 96)
num_classes = 19
max_iters = 400  # ~40 s on an idle 2-core CPU, ~6 min when it is heavily shared
embed_dim = 64
head_channels = 64

norm_cfg = dict(type='GN', num_groups=8)
data_preprocessor = dict(
    type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True, pad_val=0, seg_pad_val=255, size=crop_size)
model = dict(
    type='PEFTBackboneEncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='DinoVisionTransformer', img_size=96, patch_size=16, embed_dim=embed_dim,
        depth=4, num_heads=2, mlp_ratio=4, init_values=1.0, out_indices=[0, 1, 2, 3],
        init_cfg=None,  # no pretrained weights in the demo: random initialisation
        lora_cfg=dict(type='sora', r=8, lora_alpha=8, lora_dropout=0.0, first_eigen=False,
                      lora_weight_init='sora',
                      target_modules=['q', 'k', 'v', 'proj', 'fc1', 'fc2'],
                      start_lora_idx=2, rank_ramp=False, bias='all', merge_weights=False)),
    decode_head=dict(
        type='Mask2FormerHead',
        in_channels=[embed_dim] * 4,
        strides=[4, 8, 16, 32],
        feat_channels=head_channels,
        out_channels=head_channels,
        num_classes=num_classes,
        num_queries=24,
        num_transformer_feat_level=3,
        align_corners=False,
        pixel_decoder=dict(
            type='mmdet.MSDeformAttnPixelDecoder',
            num_outs=3,
            norm_cfg=norm_cfg,
            act_cfg=dict(type='ReLU'),
            encoder=dict(
                num_layers=1,
                layer_cfg=dict(
                    self_attn_cfg=dict(embed_dims=head_channels, num_heads=4, num_levels=3,
                                       num_points=4, im2col_step=64, dropout=0.0,
                                       batch_first=True, norm_cfg=None, init_cfg=None),
                    ffn_cfg=dict(embed_dims=head_channels, feedforward_channels=128, num_fcs=2,
                                 ffn_drop=0.0, act_cfg=dict(type='ReLU', inplace=True))),
                init_cfg=None),
            positional_encoding=dict(num_feats=head_channels // 2, normalize=True),
            init_cfg=None),
        enforce_decoder_input_project=False,
        positional_encoding=dict(num_feats=head_channels // 2, normalize=True),
        transformer_decoder=dict(
            return_intermediate=True,
            num_layers=3,
            layer_cfg=dict(
                self_attn_cfg=dict(embed_dims=head_channels, num_heads=4, attn_drop=0.0,
                                   proj_drop=0.0, dropout_layer=None, batch_first=True),
                cross_attn_cfg=dict(embed_dims=head_channels, num_heads=4, attn_drop=0.0,
                                    proj_drop=0.0, dropout_layer=None, batch_first=True),
                ffn_cfg=dict(embed_dims=head_channels, feedforward_channels=256, num_fcs=2,
                             act_cfg=dict(type='ReLU', inplace=True), ffn_drop=0.0,
                             dropout_layer=None, add_identity=True)),
            init_cfg=None),
        loss_cls=dict(type='mmdet.CrossEntropyLoss', use_sigmoid=False, loss_weight=2.0,
                      reduction='mean', class_weight=[1.0] * num_classes + [0.1]),
        loss_mask=dict(type='mmdet.CrossEntropyLoss', use_sigmoid=True, reduction='mean',
                       loss_weight=5.0),
        loss_dice=dict(type='mmdet.DiceLoss', use_sigmoid=True, activate=True,
                       reduction='mean', naive_dice=True, eps=1.0, loss_weight=5.0),
        train_cfg=dict(
            num_points=1024, oversample_ratio=3.0, importance_sample_ratio=0.75,
            assigner=dict(
                type='mmdet.HungarianAssigner',
                match_costs=[
                    dict(type='mmdet.ClassificationCost', weight=2.0),
                    dict(type='mmdet.CrossEntropyLossCost', weight=5.0, use_sigmoid=True),
                    dict(type='mmdet.DiceCost', weight=5.0, pred_act=True, eps=1.0)
                ]),
            sampler=dict(type='mmdet.MaskPseudoSampler'))),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))

# ---------------------------------------------------------------- data
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomChoiceResize', scales=[int(96 * x * 0.1) for x in range(8, 16)],
         resize_type='ResizeShortestEdge', max_size=384),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(96, 96), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
img_ratios = [0.75, 1.0, 1.25]
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale_factor=r, keep_ratio=True) for r in img_ratios],
        [dict(type='RandomFlip', prob=0., direction='horizontal'),
         dict(type='RandomFlip', prob=1., direction='horizontal')],
        [dict(type='LoadAnnotations')],
        [dict(type='PackSegInputs')],
    ]),
]
tta_model = dict(type='SegTTAModel')

source = dict(type='CityscapesDataset', data_root=data_root + '/gta',
              data_prefix=dict(img_path='images', seg_map_path='labels'),
              img_suffix='.png', seg_map_suffix='_labelTrainIds.png', pipeline=train_pipeline)
targets = [
    dict(type='CityscapesDataset', data_root=f'{data_root}/{name}',
         data_prefix=dict(img_path='leftImg8bit/val', seg_map_path='gtFine/val'),
         pipeline=test_pipeline)
    for name in ('fog', 'night')
]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True), dataset=source)
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='ConcatDataset', datasets=targets))
test_dataloader = val_dataloader
val_evaluator = dict(type='DGIoUMetric', iou_metrics=['mIoU'],
                     dataset_keys=['/fog/', '/night/'], mean_used_keys=['/fog/', '/night/'])
test_evaluator = val_evaluator

# ---------------------------------------------------------------- schedule
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='PEFTOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),
    paramwise_cfg=dict(
        custom_keys={
            'backbone': dict(lr_mult=0.5, decay_mult=1.0),
            'query_embed': dict(lr_mult=1.0, decay_mult=0.0),
            'query_feat': dict(lr_mult=1.0, decay_mult=0.0),
            'level_embed': dict(lr_mult=1.0, decay_mult=0.0),
            'norm': dict(decay_mult=0.0),
        },
        norm_decay_mult=0.0))
param_scheduler = [
    dict(type='PolyLR', eta_min=0, power=0.9, begin=0, end=max_iters, by_epoch=False),
    dict(type='CosineAnnealingParamScheduler', param_name='weight_decay', eta_min=1e-5,
         begin=0, end=max_iters, by_epoch=False),
]
train_cfg = dict(type='FastResumeIterBasedTrainLoop', max_iters=max_iters,
                 val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(enable=False, base_batch_size=2)

# ---------------------------------------------------------------- runtime
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=25, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='SafeCheckpointHook', by_epoch=False, interval=max_iters,
                    max_keep_ckpts=1, save_best='mean_mIoU', rule='greater'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
custom_hooks = [
    dict(type='WeightDecayLoggingHook', interval=25),
    dict(type='SoMAMetaHook'),
]
# one torch CPU thread (soma.apis.launch.cpu_thread_count; OMP_NUM_THREADS overrides it):
# the operations of a tiny model are too small to gain from a thread pool, and on a busy
# machine its waiting costs many times the work itself
cpu_threads = 1
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))
vis_backends = [dict(type='LocalVisBackend'), dict(type='OptionalTensorboardVisBackend')]
visualizer = dict(type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)
# the trainable mask_token of the backbone takes no part in segmentation: DDP must be told
find_unused_parameters = True
