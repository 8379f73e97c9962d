# Runtime shared by the detection (DGOD) configs: mmdet scope, hooks, logging, visualisation.
# Logging, as in the release: scalars as json (LocalVisBackend) and TensorBoard event files
# under <work_dir>/<timestamp>/vis_data/. OptionalTensorboardVisBackend (soma/engine/
# vis_backends.py) writes them when the `tensorboard` package is installed (`make setup`
# installs it) and logs one info line and does nothing otherwise.
default_scope = 'mmdet'
custom_imports = dict(imports=['soma'], allow_failed_imports=False)

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)
vis_backends = [dict(type='LocalVisBackend'), dict(type='OptionalTensorboardVisBackend')]
visualizer = dict(type='DetLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=42)

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='SafeCheckpointHook', by_epoch=False, interval=4000, max_keep_ckpts=8),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='DetVisualizationHook'),
)
custom_hooks = [
    dict(type='LegacyKeysHook'),  # release Co-DETR checkpoints as load_from / resume
    dict(type='WeightDecayLoggingHook', interval=50),
    dict(type='SoMAMetaHook'),
    dict(type='MergeAdaptersHook'),  # validate/test merged; weights restored exactly
]
# Not every head takes part in every step (e.g. the mask token, the denoising label
# embedding without targets): DDP must be told.
find_unused_parameters = True
