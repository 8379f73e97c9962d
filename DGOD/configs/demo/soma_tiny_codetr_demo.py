# A CPU-sized SoMA + Co-DETR run on the synthetic Diverse Weather benchmark
# (soma.datasets.synthetic_dgod): tiny DINOv2 (embed 64, depth 4), tiny Co-DINO (embed 64,
# 2 encoder / 2 decoder layers, 30 queries), 128-px images. `tools/demo_dgod.py` generates
# the data and points `data_root` at it; nothing here is meant to give a good detector.
_base_ = [
    '../_base_/models/co_dino_dinov2_l.py',
    '../_base_/default_runtime.py',
]
embed = 64
levels = 5
img = 128

model = dict(
    type='PEFTBackboneCoDETR',
    backbone=dict(
        img_size=img, patch_size=16, embed_dim=64, depth=4, num_heads=2,
        out_indices=[0, 1, 2, 3], init_cfg=None,
        lora_cfg=dict(type='sora', r=4, lora_alpha=4, start_lora_idx=2,
                      target_modules=['q', 'k', 'v', 'proj', 'fc1', 'fc2'])),
    neck=dict(in_channels=[64, 64, 64, 64], out_channels=embed),
    query_head=dict(
        num_query=30,
        max_pos_coords=50,
        dn_cfg=dict(group_cfg=dict(dynamic=True, num_groups=None, num_dn_queries=20)),
        transformer=dict(
            encoder=dict(
                num_layers=2,
                layer_cfg=dict(
                    self_attn_cfg=dict(embed_dims=embed, num_heads=4, num_levels=levels),
                    ffn_cfg=dict(embed_dims=embed, feedforward_channels=128))),
            decoder=dict(
                num_layers=2,
                layer_cfg=dict(
                    self_attn_cfg=dict(embed_dims=embed, num_heads=4),
                    cross_attn_cfg=dict(embed_dims=embed, num_heads=4, num_levels=levels),
                    ffn_cfg=dict(embed_dims=embed, feedforward_channels=128))),
            positional_encoding=dict(num_feats=embed // 2))),
    rpn_head=dict(in_channels=embed, feat_channels=embed),
    roi_head=[
        dict(
            type='CoStandardRoIHead',
            bbox_roi_extractor=dict(
                type='SingleRoIExtractor',
                roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0),
                out_channels=embed,
                featmap_strides=[4, 8, 16, 32, 64],
                finest_scale=56),
            bbox_head=dict(
                type='Shared2FCBBoxHead',
                in_channels=embed,
                fc_out_channels=128,
                roi_feat_size=7,
                num_classes=7,
                bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                                target_stds=[0.1, 0.1, 0.2, 0.2]),
                reg_class_agnostic=False,
                reg_decoded_bbox=True,
                loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=12.0),
                loss_bbox=dict(type='GIoULoss', loss_weight=120.0)))
    ],
    bbox_head=[
        dict(
            type='CoATSSHead',
            num_classes=7,
            in_channels=embed,
            stacked_convs=1,
            feat_channels=embed,
            anchor_generator=dict(type='AnchorGenerator', ratios=[1.0], octave_base_scale=8,
                                  scales_per_octave=1, strides=[4, 8, 16, 32, 64, 128]),
            bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[.0, .0, .0, .0],
                            target_stds=[0.1, 0.1, 0.2, 0.2]),
            loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                          loss_weight=12.0),
            loss_bbox=dict(type='GIoULoss', loss_weight=24.0),
            loss_centerness=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=12.0)),
    ])

# 128-px synthetic images: train at the generated size, test the same way.
_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(img, img), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(img, img), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
_root = 'data/diverseWeather'
_tests = [('daytime_clear', 'test.txt'), ('Night-Sunny', 'train.txt'),
          ('dusk_rainy', 'train.txt'), ('night_rainy', 'train.txt'),
          ('daytime_foggy', 'train.txt')]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type='DiverseWeatherDataset', data_root=f'{_root}/daytime_clear',
        ann_file='VOC2007/ImageSets/Main/train.txt',
        data_prefix=dict(sub_data_root='VOC2007/'),
        filter_cfg=dict(filter_empty_gt=True), pipeline=_train_pipeline))
val_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False, drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='ConcatDataset',
        datasets=[
            dict(type='DiverseWeatherDataset', data_root=f'{_root}/{domain}',
                 ann_file=f'VOC2007/ImageSets/Main/{split}',
                 data_prefix=dict(sub_data_root='VOC2007/'), test_mode=True,
                 pipeline=_test_pipeline) for domain, split in _tests
        ]))
test_dataloader = val_dataloader
val_evaluator = dict(
    type='DGVOCMetric', metric='mAP', eval_mode='11points',
    dataset_keys=['daytime_clear', 'Night-Sunny', 'dusk_rainy', 'night_rainy', 'daytime_foggy'])
test_evaluator = val_evaluator

max_iters = 120
optim_wrapper = dict(
    constructor='PEFTOptimWrapperConstructor',
    # 5x the release's lr: a tiny randomly initialised model, a few iterations
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),
    clip_grad=dict(max_norm=35, norm_type=2),
    paramwise_cfg=dict(
        custom_keys={
            'backbone': dict(lr_mult=0.5, decay_mult=0.2),
            'query_embed': dict(lr_mult=1.0, decay_mult=0.0),
            'level_embed': dict(lr_mult=1.0, decay_mult=0.0),
            'norm': dict(decay_mult=0.0),
        },
        norm_decay_mult=0.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=False, begin=0, end=10),
    dict(type='MultiStepLR', begin=10, end=max_iters, by_epoch=False, milestones=[90],
         gamma=0.1),
    dict(type='CosineAnnealingParamScheduler', param_name='weight_decay', eta_min=1e-5,
         by_epoch=False, begin=0, end=max_iters),
]
train_cfg = dict(type='FastResumeIterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10, log_metric_by_epoch=False),
    checkpoint=dict(type='SafeCheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1),
    visualization=dict(type='DetVisualizationHook', draw=False))
custom_hooks = [
    dict(type='LegacyKeysHook'),
    dict(type='WeightDecayLoggingHook', interval=20),
    dict(type='SoMAMetaHook'),
]
# one torch CPU thread (soma.apis.launch.cpu_thread_count; OMP_NUM_THREADS overrides it):
# the operations of a tiny model are too small to gain from a thread pool, and on a busy
# machine its waiting costs many times the work itself
cpu_threads = 1
env_cfg = dict(mp_cfg=dict(mp_start_method='fork', opencv_num_threads=1),
               dist_cfg=dict(backend='gloo'))
