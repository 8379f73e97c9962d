# Co-DETR (Co-DINO) with a DINOv2-L backbone at 1024x1024, 7 Diverse Weather classes.
#
# Config style: mmdet 3.x. The transformer's encoder/decoder take mmdet 3.3's new-style
# `num_layers` + `layer_cfg` (self_attn_cfg / cross_attn_cfg / ffn_cfg) dicts, the same as
# mmdet's own DINO configs, instead of the release's legacy mmcv `transformerlayers`,
# `attn_cfgs`, `operation_order`. Same computation: 6 post-norm encoder layers with 5-level
# deformable attention, 6 post-norm decoder layers (self-attention 8 heads, 5-level
# deformable cross-attention), FFN 2048, no dropout. See soma/models/detectors/.
#
# Auxiliary heads (RPN + RoI, ATSS) run on the encoder's 6 maps; their loss weights are
# multiplied by num_dec_layer * loss_lambda = 12 as in the release. train_cfg / test_cfg
# are lists: [query head, rpn+rcnn, atss].
num_classes = 7
num_dec_layer = 6
loss_lambda = 2.0
embed_dims = 256
num_levels = 5

model = dict(
    type='CoDETR',
    use_lsj=False,
    eval_module='detr',  # 'detr' | 'one-stage' | 'two-stage'
    with_pos_coord=True,
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=32,
        batch_augments=None),
    backbone=dict(
        type='DinoVisionTransformer',
        patch_size=16,
        embed_dim=1024,
        depth=24,
        num_heads=16,
        mlp_ratio=4,
        img_size=1024,
        ffn_layer='mlp',
        init_values=1e-05,
        block_chunks=0,
        qkv_bias=True,
        proj_bias=True,
        ffn_bias=True,
        out_indices=[7, 11, 15, 23],
        init_cfg=dict(
            type='Pretrained', checkpoint='checkpoints/dinov2_sora_converted_1024x1024.pth'),
        lora_cfg=dict()),
    neck=dict(
        type='ChannelMapper',
        in_channels=[1024, 1024, 1024, 1024],
        kernel_size=1,
        out_channels=embed_dims,
        act_cfg=None,
        norm_cfg=dict(type='GN', num_groups=32),
        num_outs=num_levels),
    query_head=dict(
        type='CoDINOHead',
        num_query=900,
        num_classes=num_classes,
        max_pos_coords=300,
        dn_cfg=dict(
            label_noise_scale=0.5,
            box_noise_scale=1.0,
            group_cfg=dict(dynamic=True, num_groups=None, num_dn_queries=100)),
        transformer=dict(
            type='SoMACoDinoTransformer',
            num_feature_levels=num_levels,
            num_co_heads=2,  # RoI (Faster R-CNN) head first, then ATSS
            with_coord_feat=False,
            encoder=dict(
                num_layers=6,
                layer_cfg=dict(
                    self_attn_cfg=dict(embed_dims=embed_dims, num_levels=num_levels, dropout=0.0),
                    ffn_cfg=dict(embed_dims=embed_dims, feedforward_channels=2048,
                                 ffn_drop=0.0))),
            decoder=dict(
                num_layers=num_dec_layer,
                layer_cfg=dict(
                    self_attn_cfg=dict(embed_dims=embed_dims, num_heads=8, dropout=0.0),
                    cross_attn_cfg=dict(embed_dims=embed_dims, num_levels=num_levels,
                                        dropout=0.0),
                    ffn_cfg=dict(embed_dims=embed_dims, feedforward_channels=2048,
                                 ffn_drop=0.0)),
                post_norm_cfg=None),
            positional_encoding=dict(num_feats=embed_dims // 2, temperature=20,
                                     normalize=True)),
        loss_cls=dict(type='QualityFocalLoss', use_sigmoid=True, beta=2.0, loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=5.0),
        loss_iou=dict(type='GIoULoss', loss_weight=2.0)),
    rpn_head=dict(
        type='RPNHead',
        in_channels=embed_dims,
        feat_channels=embed_dims,
        anchor_generator=dict(
            type='AnchorGenerator',
            octave_base_scale=4,
            scales_per_octave=3,
            ratios=[0.5, 1.0, 2.0],
            strides=[4, 8, 16, 32, 64, 128]),
        bbox_coder=dict(
            type='DeltaXYWHBBoxCoder',
            target_means=[.0, .0, .0, .0],
            target_stds=[1.0, 1.0, 1.0, 1.0]),
        loss_cls=dict(
            type='CrossEntropyLoss', use_sigmoid=True,
            loss_weight=1.0 * num_dec_layer * loss_lambda),
        loss_bbox=dict(type='L1Loss', loss_weight=1.0 * num_dec_layer * loss_lambda)),
    roi_head=[
        dict(
            type='CoStandardRoIHead',
            bbox_roi_extractor=dict(
                type='SingleRoIExtractor',
                roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0),
                out_channels=embed_dims,
                featmap_strides=[4, 8, 16, 32, 64],
                finest_scale=56),
            bbox_head=dict(
                type='Shared2FCBBoxHead',
                in_channels=embed_dims,
                fc_out_channels=1024,
                roi_feat_size=7,
                num_classes=num_classes,
                bbox_coder=dict(
                    type='DeltaXYWHBBoxCoder',
                    target_means=[0., 0., 0., 0.],
                    target_stds=[0.1, 0.1, 0.2, 0.2]),
                reg_class_agnostic=False,
                reg_decoded_bbox=True,
                loss_cls=dict(
                    type='CrossEntropyLoss', use_sigmoid=False,
                    loss_weight=1.0 * num_dec_layer * loss_lambda),
                loss_bbox=dict(type='GIoULoss', loss_weight=10.0 * num_dec_layer * loss_lambda)))
    ],
    bbox_head=[
        dict(
            type='CoATSSHead',
            num_classes=num_classes,
            in_channels=embed_dims,
            stacked_convs=1,
            feat_channels=embed_dims,
            anchor_generator=dict(
                type='AnchorGenerator',
                ratios=[1.0],
                octave_base_scale=8,
                scales_per_octave=1,
                strides=[4, 8, 16, 32, 64, 128]),
            bbox_coder=dict(
                type='DeltaXYWHBBoxCoder',
                target_means=[.0, .0, .0, .0],
                target_stds=[0.1, 0.1, 0.2, 0.2]),
            loss_cls=dict(
                type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                loss_weight=1.0 * num_dec_layer * loss_lambda),
            loss_bbox=dict(type='GIoULoss', loss_weight=2.0 * num_dec_layer * loss_lambda),
            loss_centerness=dict(
                type='CrossEntropyLoss', use_sigmoid=True,
                loss_weight=1.0 * num_dec_layer * loss_lambda)),
    ],
    train_cfg=[
        dict(
            assigner=dict(
                type='HungarianAssigner',
                match_costs=[
                    dict(type='FocalLossCost', weight=2.0),
                    dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
                    dict(type='IoUCost', iou_mode='giou', weight=2.0)
                ])),
        dict(
            rpn=dict(
                assigner=dict(
                    type='MaxIoUAssigner', pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                    match_low_quality=True, ignore_iof_thr=-1),
                sampler=dict(
                    type='RandomSampler', num=256, pos_fraction=0.5, neg_pos_ub=-1,
                    add_gt_as_proposals=False),
                allowed_border=-1,
                pos_weight=-1,
                debug=False),
            rpn_proposal=dict(
                nms_pre=4000, max_per_img=1000, nms=dict(type='nms', iou_threshold=0.7),
                min_bbox_size=0),
            rcnn=dict(
                assigner=dict(
                    type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5,
                    match_low_quality=False, ignore_iof_thr=-1),
                sampler=dict(
                    type='RandomSampler', num=512, pos_fraction=0.25, neg_pos_ub=-1,
                    add_gt_as_proposals=True),
                pos_weight=-1,
                debug=False)),
        dict(assigner=dict(type='ATSSAssigner', topk=9), allowed_border=-1, pos_weight=-1,
             debug=False),
    ],
    test_cfg=[
        # DETR branch (the one evaluated): top 300, class-wise soft-NMS at IoU 0.8
        dict(max_per_img=300, nms=dict(type='soft_nms', iou_threshold=0.8)),
        dict(
            rpn=dict(nms_pre=1000, max_per_img=1000, nms=dict(type='nms', iou_threshold=0.7),
                     min_bbox_size=0),
            rcnn=dict(score_thr=0.0, nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)),
        dict(nms_pre=1000, min_bbox_size=0, score_thr=0.0,
             nms=dict(type='nms', iou_threshold=0.6), max_per_img=100),
    ])
