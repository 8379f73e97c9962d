# Runtime shared by every segmentation config: scope, hooks, logging, visualisation.
#
# Logging, as in the release: scalars as json (LocalVisBackend) and TensorBoard event files
# under <work_dir>/<timestamp>/vis_data/. OptionalTensorboardVisBackend (soma/engine/
# vis_backends.py) writes them when the `tensorboard` package is installed (`make setup`
# installs it) and logs one info line and does nothing otherwise.
default_scope = 'mmseg'
custom_imports = dict(imports=['soma'], allow_failed_imports=False)

env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)
vis_backends = [dict(type='LocalVisBackend'), dict(type='OptionalTensorboardVisBackend')]
visualizer = dict(type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=42)

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='SafeCheckpointHook', by_epoch=False, interval=4000, max_keep_ckpts=6),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'),
)
# Lists replace (not merge) under `_base_`: a config adding EMA repeats these hooks.
custom_hooks = [
    dict(type='WeightDecayLoggingHook', interval=50),
    dict(type='SoMAMetaHook'),
    dict(type='MergeAdaptersHook'),  # validate/test merged; weights restored exactly
]

# Multi-scale + flip test-time augmentation (`tools/test.py --tta`), ratios of the release.
tta_model = dict(type='SegTTAModel')
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(
        type='TestTimeAug',
        transforms=[
            [dict(type='Resize', scale_factor=r, keep_ratio=True)
             for r in [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]],
            [dict(type='RandomFlip', prob=0., direction='horizontal'),
             dict(type='RandomFlip', prob=1., direction='horizontal')],
            [dict(type='LoadAnnotations')],
            [dict(type='PackSegInputs')],
        ]),
]

# The trainable `mask_token` of the backbone takes no part in segmentation: DDP must be told.
find_unused_parameters = True
