# The SoMA recipe: AdamW, backbone lr x0.5, no decay on queries/level embeddings/norms,
# poly LR and cosine-annealed weight decay (0.05 -> 1e-5) over 40k iterations.
max_iters = 40000
embed_multi = dict(lr_mult=1.0, decay_mult=0.0)
optim_wrapper = dict(
    constructor='PEFTOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),
    paramwise_cfg=dict(
        custom_keys={
            'backbone': dict(lr_mult=0.5, decay_mult=1.0),
            'query_embed': embed_multi,
            'query_feat': embed_multi,
            'level_embed': embed_multi,
            'norm': dict(decay_mult=0.0),
        },
        norm_decay_mult=0.0,
    ),
)
param_scheduler = [
    dict(type='PolyLR', eta_min=0, power=0.9, begin=0, end=max_iters, by_epoch=False),
    dict(type='CosineAnnealingParamScheduler', param_name='weight_decay', eta_min=1e-5,
         begin=0, end=max_iters, by_epoch=False),
]
# mmengine's IterBasedTrainLoop with a resume that skips sampler indices instead of loading
# (and augmenting) the batches already seen; same arguments.
train_cfg = dict(type='FastResumeIterBasedTrainLoop', max_iters=max_iters, val_interval=4000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

# The release's total batch (GPUs x per-GPU batch); `tools/train.py --auto-scale-lr` scales the
# learning rate by (your total batch) / base_batch_size. Single-GPU batch 4 unless overridden.
auto_scale_lr = dict(enable=False, base_batch_size=4)
