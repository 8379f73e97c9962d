"""Every segmentation config loads, resolves in the registries, builds (tiny backbone) and
carries the recipe of SPEC sections 3, 6 and 7; dataset configs load a tiny on-disk replica.

Expected values below are written out from the SPEC tables (not read from the configs).
"""
import copy
import glob
import os
import re

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, 'configs')


def _rel(paths):
    return sorted(os.path.relpath(p, CONFIGS) for p in paths)


ALL_CONFIGS = _rel(glob.glob(os.path.join(CONFIGS, '**', '*.py'), recursive=True))
TOP_CONFIGS = [c for c in ALL_CONFIGS if not c.startswith('_base_')]
SEG_CONFIGS = _rel(glob.glob(os.path.join(CONFIGS, 'soma', '*.py')) +
                   glob.glob(os.path.join(CONFIGS, 'sora', '*.py')))


def load(rel):
    return Config.fromfile(os.path.join(CONFIGS, rel))


def mmseg_scope():
    import soma  # noqa: F401  (registers everything)
    return DefaultScope.overwrite_default_scope('mmseg')


# ----------------------------------------------------------------------------- SPEC facts
LORA_CFG = dict(type='sora', r=16, lora_alpha=16, lora_dropout=0.0, first_eigen=False,
                lora_weight_init='sora', target_modules=['q', 'k', 'v', 'proj', 'fc1', 'fc2'],
                start_lora_idx=8, rank_ramp=False, bias='all', merge_weights=False,
                fan_in_fan_out=False, modules_to_save=None)
CKPT_512 = 'checkpoints/dinov2_sora_converted.pth'
CKPT_1024 = 'checkpoints/dinov2_sora_converted_1024x1024.pth'
SCALES_512 = [256, 307, 358, 409, 460, 512, 563, 614, 665, 716, 768, 819, 870, 921, 972, 1024]
SCALES_1024 = [512, 614, 716, 819, 921, 1024, 1126, 1228, 1331, 1433, 1536, 1638, 1740, 1843,
               1945, 2048]

# dataset variable -> (root, image dir, label dir, image suffix, label suffix, test scale)
CITYS = ('data/cityscapes/', '_leftImg8bit.png', '_gtFine_labelTrainIds.png')
LAYOUT = {
    'train_gta': ('data/gta/', 'images', 'labels', '.png', '_labelTrainIds.png', None),
    'val_gta': ('data/gta/', 'images', 'labels', '.png', '_labelTrainIds.png', (1280, 720)),
    'train_syn': ('data/synthia/', 'RGB', 'GT/LABELS', '.png', '_labelTrainIds.png', None),
    'val_syn': ('data/synthia/', 'RGB', 'GT/LABELS', '.png', '_labelTrainIds.png', (2560, 1580)),
    'train_ur': ('data/urbansyn/', 'rgb', 'ss', '.png', '.png', None),
    'val_ur': ('data/urbansyn/', 'rgb', 'ss', '.png', '.png', (2560, 1580)),
    'train_cityscapes': (CITYS[0], 'leftImg8bit/train', 'gtFine/train') + CITYS[1:] + (None,),
    'train_cityscapes_1_16': (CITYS[0], 'leftImg8bit/train', 'gtFine/train') + CITYS[1:] + (None,),
    'val_cityscapes': (CITYS[0], 'leftImg8bit/val', 'gtFine/val') + CITYS[1:] + ((2048, 1024),),
    'train_bdd': ('data/bdd100k/', 'images/10k/train', 'labels/sem_seg/masks/train', '.jpg',
                  '.png', None),
    'val_bdd': ('data/bdd100k/', 'images/10k/val', 'labels/sem_seg/masks/val', '.jpg', '.png',
                (1280, 720)),
    'train_mapillary': ('data/mapillary/', 'training/images',
                        'cityscapes_trainIdLabel/train/label', '.jpg', '.png', None),
    'val_mapillary': ('data/mapillary/', 'half/val_img', 'half/val_label', '.jpg', '.png',
                      (2048, 1024)),
}
for _cond in ('fog', 'night', 'rain', 'snow'):
    for _split in ('val', 'test'):
        LAYOUT[f'{_split}_{_cond}_acdc'] = (
            'data/acdc/', f'rgb_anon/{_cond}/{_split}', f'gt/{_cond}/{_split}', '_rgb_anon.png',
            '_gt_labelTrainIds.png', (1920, 1080))

# dataset base file -> the dataset variables it defines
DATASET_FILES = {f'{stem}_{s}x{s}.py': [f'train_{v}', f'val_{v}']
                 for stem, v in (('gta', 'gta'), ('synthia', 'syn'), ('urbansyn', 'ur'),
                                 ('cityscapes', 'cityscapes'), ('bdd100k', 'bdd'),
                                 ('mapillary', 'mapillary')) for s in (512, 1024)}
DATASET_FILES['cityscapes_1-16_1024x1024.py'] = ['train_cityscapes_1_16']
DATASET_FILES['acdc.py'] = [f'{sp}_{c}_acdc' for c in ('fog', 'night', 'rain', 'snow')
                            for sp in ('val', 'test')]

CBM = (['val_cityscapes', 'val_bdd', 'val_mapillary'], ['citys', 'map', 'bdd'])
BM = (['val_bdd', 'val_mapillary'], ['map', 'bdd'])
ACDC4 = ['night/', 'fog/', 'snow/', 'rain/']
ACDC = (['val_night_acdc', 'val_fog_acdc', 'val_snow_acdc', 'val_rain_acdc'], ACDC4)
# DG set-up -> (train datasets, val datasets, keys, mean keys)
DG = {
    'dg_gta_512x512.py': (['train_gta'],) + CBM + (CBM[1],),
    'dg_gs2cbm_512x512.py': (['train_gta', 'train_syn'],) + CBM + (CBM[1],),
    'dg_gsu2cbm_512x512.py': (['train_gta', 'train_syn', 'train_ur'],) + CBM + (CBM[1],),
    'dg_gsu2cbm_1024x1024.py': (['train_gta', 'train_syn', 'train_ur'],) + CBM + (CBM[1],),
    'dg_c16_2cbm_1024x1024.py': (['train_cityscapes_1_16'],) + CBM + (CBM[1],),
    'dg_citys2bm_512x512.py': (['train_cityscapes'],) + BM + (BM[1],),
    'dg_citys2bm_1024x1024.py': (['train_cityscapes'],) + BM + (BM[1],),
    'dg_citys2acdc_512x512.py': (['train_cityscapes'], ACDC[0] + ['val_cityscapes'],
                                 ACDC4 + ['cityscapes/'], ACDC4),
    'dg_citys2acdc_1024x1024.py': (['train_cityscapes'],) + ACDC + (ACDC4,),
}

# The SoMA settings (SPEC 6): dg set-up, crop, per-GPU batch, lr, iterations, val interval,
# EMA begin, warm-up (iterations, start factor), train scale ('short' = shortest-edge choice,
# 'random' = RandomResize (2048, 1024) x [0.5, 2]).
R = dict(lr=1e-4, iters=40000, val=4000, ema=None, warmup=None)
RECIPES = {
    'soma_dinov2-L_mask2former.py': dict(R, dg='dg_gta_512x512.py', crop=512, batch=4,
                                         ema=12000, scale='short'),
    'soma_dinov2-L_mask2former_gs2cbm.py': dict(R, dg='dg_gs2cbm_512x512.py', crop=512,
                                                batch=4, scale='short'),
    'soma_dinov2-L_mask2former_gsu2cbm.py': dict(R, dg='dg_gsu2cbm_512x512.py', crop=512,
                                                 batch=4, scale='short'),
    'soma_dinov2-L_mask2former_gsu2cbm_1024x1024.py': dict(
        R, dg='dg_gsu2cbm_1024x1024.py', crop=1024, batch=4, ema=16000, scale='random'),
    'soma_dinov2-L_mask2former_gsuc16_2cbm_1024x1024.py': dict(
        R, dg='dg_c16_2cbm_1024x1024.py', crop=1024, batch=4, lr=1e-5, iters=4000, val=400,
        scale='random'),
    'soma_dinov2_mask2former_c2bm.py': dict(R, dg='dg_citys2bm_512x512.py', crop=512, batch=8,
                                            ema=20000, warmup=(1500, 1e-2), scale='short'),
    'soma_dinov2_mask2former_c2bm_1024x1024.py': dict(
        R, dg='dg_citys2bm_1024x1024.py', crop=1024, batch=4, ema=16000, warmup=(1500, 1e-2),
        scale='short'),
    'soma_dinov2_mask2former_ACDC_1024x1024_bs4x2.py': dict(
        R, dg='dg_citys2acdc_1024x1024.py', crop=1024, batch=2, ema=20000,
        warmup=(10000, 1e-6), scale='short'),
    'soma_dinov2_mask2former_ACDC_512x512_bs4x2.py': dict(
        R, dg='dg_citys2acdc_1024x1024.py', crop=512, batch=2, ema=20000,
        warmup=(10000, 1e-6), scale='short1024'),
    'soma_dinov2-L_semfpn.py': dict(R, dg='dg_gta_512x512.py', crop=512, batch=4, ema=12000,
                                    scale='short'),
}
SORA_NAMES = [
    'sora_dinov2-L_mask2former.py', 'sora_dinov2-L_mask2former_gs2cbm.py',
    'sora_dinov2-L_mask2former_gsu2cbm.py', 'sora_dinov2-L_mask2former_gsu2cbm_1024x1024.py',
    'sora_dinov2-L_mask2former_gsuc16_2cbm_1024x1024.py', 'sora_dinov2_mask2former_c2bm.py',
    'sora_dinov2_mask2former_ACDC_1024x1024_bs4x2.py']


def resize_of(pipeline):
    return [t for t in pipeline if t['type'] in ('RandomChoiceResize', 'RandomResize')]


def check_train_pipeline(pipeline, crop, scale):
    types = [t['type'] for t in pipeline]
    assert types == ['LoadImageFromFile', 'LoadAnnotations', types[2], 'RandomCrop',
                     'RandomFlip', 'PhotoMetricDistortion', 'PackSegInputs'], types
    resize = pipeline[2]
    if scale in ('short', 'short1024'):
        base = 1024 if (crop == 1024 or scale == 'short1024') else 512
        assert resize['type'] == 'RandomChoiceResize'
        assert resize['resize_type'] == 'ResizeShortestEdge'
        assert list(resize['scales']) == (SCALES_512 if base == 512 else SCALES_1024)
        assert resize['max_size'] == 4 * base
    else:
        assert resize['type'] == 'RandomResize'
        assert tuple(resize['scale']) == (2048, 1024)
        assert tuple(resize['ratio_range']) == (0.5, 2.0) and resize['keep_ratio']
    assert tuple(pipeline[3]['crop_size']) == (crop, crop)
    assert pipeline[3]['cat_max_ratio'] == 0.75
    assert pipeline[4]['prob'] == 0.5


def check_layout(ds, var):
    root, img, seg, img_suffix, seg_suffix, test_scale = LAYOUT[var]
    assert ds['type'] == 'CityscapesDataset'
    assert ds['data_root'] == root
    assert dict(ds['data_prefix']) == dict(img_path=img, seg_map_path=seg)
    assert (ds['img_suffix'], ds['seg_map_suffix']) == (img_suffix, seg_suffix)
    if var == 'train_cityscapes_1_16':
        assert ds['ann_file'] == 'train_1_16_v1.txt'
    else:
        assert not ds.get('ann_file')
    if test_scale is not None:
        types = [t['type'] for t in ds['pipeline']]
        assert 'LoadAnnotations' not in types[:2]  # labels are not resized
        resize = ds['pipeline'][1]
        assert resize['type'] == 'Resize' and resize['keep_ratio']
        return tuple(resize['scale'])


# ----------------------------------------------------------------------------- all configs
@pytest.mark.parametrize('rel', ALL_CONFIGS)
def test_config_loads(rel):
    cfg = load(rel)
    if rel.startswith('_base_'):
        return
    assert cfg.default_scope == 'mmseg'
    assert cfg.custom_imports == dict(imports=['soma'], allow_failed_imports=False)


def _types(obj):
    """Every ``type`` string inside a (nested) pipeline/dataset config."""
    if isinstance(obj, dict):
        if isinstance(obj.get('type'), str):
            yield obj['type']
        if isinstance(obj.get('resize_type'), str):
            yield obj['resize_type']
        for v in obj.values():
            yield from _types(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _types(v)


@pytest.mark.parametrize('rel', TOP_CONFIGS)
def test_every_type_is_registered(rel):
    """Runtime parts of every top-level config resolve in mmseg's registries (no typos)."""
    from mmseg import registry as reg
    cfg = load(rel)
    with mmseg_scope():
        wanted = [(reg.LOOPS, cfg[k].type) for k in ('train_cfg', 'val_cfg', 'test_cfg')]
        wanted += [(reg.OPTIM_WRAPPER_CONSTRUCTORS, cfg.optim_wrapper.constructor),
                   (reg.OPTIMIZERS, cfg.optim_wrapper.optimizer.type),
                   (reg.VISUALIZERS, cfg.visualizer.type)]
        if cfg.get('tta_model'):
            wanted.append((reg.MODELS, cfg.tta_model.type))
            wanted += [(reg.TRANSFORMS, t) for t in _types(cfg.tta_pipeline)]
        wanted += [(reg.PARAM_SCHEDULERS, s['type']) for s in cfg.param_scheduler]
        wanted += [(reg.HOOKS, h['type']) for h in cfg.get('custom_hooks', [])]
        wanted += [(reg.HOOKS, h['type']) for h in cfg.default_hooks.values()]
        wanted += [(reg.VISBACKENDS, b['type']) for b in cfg.visualizer.vis_backends]
        for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
            loader = cfg[name]
            wanted.append((reg.DATA_SAMPLERS, loader.sampler.type))
            for t in _types(loader.dataset):
                registry = reg.DATASETS if t.endswith('Dataset') else reg.TRANSFORMS
                wanted.append((registry, t))
        missing = [f'{r.name}:{t}' for r, t in wanted if r.get(t) is None]
        assert not missing, f'{rel}: unregistered types {missing}'
        for name in ('val_evaluator', 'test_evaluator'):
            metric = copy.deepcopy(cfg[name])
            if metric.type == 'SegPredictionWriter':  # test splits: tools/test.py --submit DIR
                metric.label_id_dir = 'work_dirs/unused_submission'
            reg.METRICS.build(metric)


# ----------------------------------------------------------------------------- model build
def tiny(model_cfg):
    """The release's model config with a 4-block ViT (64 dims) and a light head."""
    cfg = copy.deepcopy(model_cfg)
    backbone = cfg.backbone
    if backbone.get('embed_dim', 1024) > 64:
        backbone.update(img_size=64, embed_dim=64, depth=4, num_heads=2, out_indices=[0, 1, 2, 3],
                        init_cfg=None)
        if backbone.get('lora_cfg'):
            backbone.lora_cfg.update(start_lora_idx=2)
        head = cfg.decode_head
        if head.type == 'Mask2FormerHead':
            head.in_channels = [64] * 4
            head.pixel_decoder.encoder.num_layers = 1
            head.transformer_decoder.num_layers = 3
            head.train_cfg.num_points = 256
        if cfg.get('neck'):
            cfg.neck.in_channels = [64] * 4
    cfg.data_preprocessor.size = (64, 64)
    cfg.test_cfg.update(crop_size=(64, 64), stride=(43, 43))
    return cfg


def tiny_batch(n=2):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    g = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for _ in range(n):
        inputs.append(torch.randint(0, 256, (3, 64, 64), generator=g, dtype=torch.uint8))
        label = torch.randint(0, 19, (1, 64, 64), generator=g)
        label[:, :8] = 255
        s = SegDataSample(gt_sem_seg=PixelData(data=label))
        s.set_metainfo(dict(img_shape=(64, 64), ori_shape=(64, 64), pad_shape=(64, 64)))
        samples.append(s)
    return dict(inputs=inputs, data_samples=samples)


# HFVisionBackbone configs (soma_dinov3*, soma_hf-*): built in tests/configs/test_hf_configs.py
MODEL_CONFIGS = [c for c in TOP_CONFIGS if not c.startswith('sora')
                 and not os.path.basename(c).startswith(('soma_dinov3', 'soma_hf-'))]


@pytest.mark.parametrize('rel', MODEL_CONFIGS)
def test_model_builds_and_runs(rel):
    from mmseg.registry import MODELS
    cfg = load(rel)
    torch.manual_seed(0)
    with mmseg_scope():
        model = MODELS.build(tiny(cfg.model))
        model.init_weights()
        model.train()
        data = model.data_preprocessor(tiny_batch(), training=True)
        losses = model(**data, mode='loss')
        assert losses and all(torch.isfinite(v).all() for k, v in losses.items() if 'loss' in k)
        model.eval()
        with torch.no_grad():
            data = model.data_preprocessor(tiny_batch(1), training=False)
            pred = model(**data, mode='predict')[0].pred_sem_seg.data
        assert pred.shape == (1, 64, 64)
    names = [n for n, _ in model.named_parameters()]
    trainable = [n for n, p in model.named_parameters()
                 if p.requires_grad and n.startswith('backbone.')]
    frozen_kinds = ('norm1', 'norm2', 'ls1', 'ls2', 'pos_embed', 'patch_embed')
    if cfg.model.type == 'PEFTBackboneEncoderDecoder' and cfg.model.backbone.get('lora_cfg'):
        bb = tiny(cfg.model).backbone  # SoMA (peft_cfg: tests/configs/test_peft_configs.py)
        start, depth, r, d = bb.lora_cfg.start_lora_idx, bb.depth, bb.lora_cfg.r, bb.embed_dim
        # keys of SPEC 4: adapters only in blocks >= start_lora_idx
        assert f'backbone.model.blocks.{start}.attn.q.lora_A.weight' in names
        assert f'backbone.model.blocks.{depth - 1}.mlp.fc2.lora_B.weight' in names
        assert not any(f'blocks.{start - 1}.' in n and 'lora' in n for n in names)
        assert 'backbone.model.mask_token' in trainable
        target_bias = re.compile(r'backbone\.model\.blocks\.(\d+)\.'
                                 r'(attn\.(q|k|v|proj)|mlp\.(fc1|fc2))\.bias$')
        assert all('lora_' in n or n.endswith('mask_token') or (
            target_bias.match(n) and int(target_bias.match(n).group(1)) >= start)
            for n in trainable), trainable
        # SPEC 3 (mlp ratio 4): r * 18 D adapter + 9 D bias parameters per adapted block,
        # plus the mask token (ViT-L: 16 blocks -> 4,867,072)
        count = sum(p.numel() for n, p in model.named_parameters()
                    if p.requires_grad and n.startswith('backbone.'))
        assert count == (depth - start) * (r * 18 * d + 9 * d) + d
    elif cfg.model.type == 'FrozenBackboneEncoderDecoder':
        assert not any('lora' in n for n in names) and not trainable
    elif cfg.model.type == 'FrozenNSEncoderDecoder':
        assert not any('lora' in n for n in names)
        assert any(n.endswith('blocks.0.attn.q.weight') for n in trainable)
        assert not any(k in n for n in trainable for k in frozen_kinds), trainable


def test_optim_wrapper_applies_paramwise_rules():
    """The recipe's paramwise rules, applied by the constructor to a built (tiny) model."""
    from mmengine.optim import build_optim_wrapper
    from mmseg.registry import MODELS
    cfg = load('soma/soma_dinov2-L_mask2former.py')
    with mmseg_scope():
        model = MODELS.build(tiny(cfg.model))
        model.init_weights()
        wrapper = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper))
    by_param = {}
    for group in wrapper.optimizer.param_groups:
        for p in group['params']:
            by_param[id(p)] = group
    params = dict(model.named_parameters())

    def group(name):
        return by_param[id(params[name])]
    lora = 'backbone.model.blocks.2.attn.q.lora_A.weight'
    assert group(lora)['lr'] == pytest.approx(0.5e-4)
    assert group(lora)['weight_decay'] == pytest.approx(0.05)
    assert group('decode_head.query_embed.weight')['weight_decay'] == 0
    assert group('decode_head.query_feat.weight')['weight_decay'] == 0
    assert group('decode_head.query_embed.weight')['lr'] == pytest.approx(1e-4)
    norm = [n for n in params if n.startswith('decode_head') and 'norm' in n][0]
    assert group(norm)['weight_decay'] == 0
    frozen = 'backbone.model.blocks.0.attn.q.weight'
    assert id(params[frozen]) not in by_param or not params[frozen].requires_grad


# ----------------------------------------------------------------------------- recipes
@pytest.mark.parametrize('name', sorted(RECIPES))
def test_soma_recipe(name):
    exp = RECIPES[name]
    cfg = load(f'soma/{name}')
    dg = load(f'_base_/datasets/{exp["dg"]}')
    crop, iters = exp['crop'], exp['iters']
    model = cfg.model
    assert model.type == 'PEFTBackboneEncoderDecoder'
    bb = model.backbone
    assert bb.type == 'DinoVisionTransformer'
    assert (bb.embed_dim, bb.depth, bb.num_heads, bb.patch_size) == (1024, 24, 16, 16)
    assert (bb.init_values, bb.block_chunks, list(bb.out_indices)) == (1e-5, 0, [7, 11, 15, 23])
    assert dict(bb.lora_cfg) == LORA_CFG
    assert bb.img_size == crop
    assert bb.init_cfg == dict(type='Pretrained', checkpoint=CKPT_512 if crop == 512 else CKPT_1024)
    assert tuple(model.data_preprocessor.size) == (crop, crop)
    assert model.test_cfg.mode == 'slide'
    assert tuple(model.test_cfg.crop_size) == (crop, crop)
    assert tuple(model.test_cfg.stride) == ((341, 341) if crop == 512 else (683, 683))
    # optimizer and paramwise rules
    ow = cfg.optim_wrapper
    assert ow.constructor == 'PEFTOptimWrapperConstructor'
    opt = ow.optimizer
    assert (opt.type, opt.lr, opt.weight_decay, opt.eps, tuple(opt.betas)) == (
        'AdamW', exp['lr'], 0.05, 1e-8, (0.9, 0.999))
    keys = ow.paramwise_cfg.custom_keys
    assert dict(keys['backbone']) == dict(lr_mult=0.5, decay_mult=1.0)
    for k in ('query_embed', 'query_feat', 'level_embed'):
        assert keys[k]['decay_mult'] == 0.0 and keys[k].get('lr_mult', 1.0) == 1.0
    assert keys['norm']['decay_mult'] == 0.0
    assert ow.paramwise_cfg.norm_decay_mult == 0.0
    # schedules
    scheds = list(cfg.param_scheduler)
    wd = [s for s in scheds if s.get('param_name') == 'weight_decay']
    assert len(wd) == 1 and wd[0].type == 'CosineAnnealingParamScheduler'
    assert (wd[0].eta_min, wd[0].begin, wd[0].end, wd[0].by_epoch) == (1e-5, 0, iters, False)
    lr = [s for s in scheds if s.get('param_name') != 'weight_decay']
    poly = lr[-1]
    assert poly.type == 'PolyLR' and (poly.power, poly.eta_min, poly.end) == (0.9, 0, iters)
    assert not poly.by_epoch
    if exp['warmup']:
        end, factor = exp['warmup']
        assert len(lr) == 2 and lr[0].type == 'LinearLR' and not lr[0].by_epoch
        assert (lr[0].begin, lr[0].end, lr[0].start_factor) == (0, end, factor)
        assert poly.begin == end
    else:
        assert len(lr) == 1 and poly.begin == 0
    assert cfg.train_cfg.type == 'FastResumeIterBasedTrainLoop'
    assert (cfg.train_cfg.max_iters, cfg.train_cfg.val_interval) == (iters, exp['val'])
    ckpt = cfg.default_hooks.checkpoint
    assert (ckpt.interval, ckpt.by_epoch) == (exp['val'], False)
    assert cfg.default_hooks.logger.interval == 50
    # hooks: weight-decay logging, checkpoint meta, merged validation, EMA
    hooks = {h['type']: h for h in cfg.custom_hooks}
    assert hooks['WeightDecayLoggingHook']['interval'] == 50 and 'SoMAMetaHook' in hooks
    assert 'MergeAdaptersHook' in hooks
    if exp['ema'] is None:
        assert 'EMAHook' not in hooks
    else:
        assert hooks['EMAHook']['begin_iter'] == exp['ema']
    assert set(hooks) <= {'WeightDecayLoggingHook', 'SoMAMetaHook', 'MergeAdaptersHook',
                          'EMAHook'}
    # data: batch, train datasets and pipelines, evaluation
    assert cfg.train_dataloader.batch_size == exp['batch']
    assert cfg.train_dataloader.sampler.type == 'InfiniteSampler'
    train_vars, val_vars, keys_, mean_keys = DG[exp['dg']]
    ds = cfg.train_dataloader.dataset
    sources = ds.datasets if ds.type == 'ConcatDataset' else [ds]
    assert len(sources) == len(train_vars)
    for var, src in zip(train_vars, sources):
        check_layout(src, var)
        check_train_pipeline(src.pipeline, crop, exp['scale'])
    assert cfg.val_dataloader.dataset == dg.val_dataloader.dataset
    assert cfg.test_dataloader.dataset == dg.val_dataloader.dataset
    assert cfg.val_evaluator == dg.val_evaluator
    if name.endswith('gsuc16_2cbm_1024x1024.py'):
        assert cfg.load_from and cfg.load_from.endswith('.pth')
    else:
        assert cfg.load_from is None


@pytest.mark.parametrize('alias', sorted(os.listdir(os.path.join(CONFIGS, 'sora'))))
def test_sora_alias_is_identical(alias):
    """configs/sora/<release name> is exactly configs/soma/soma_<rest>."""
    name = 'soma_' + alias[len('sora_'):]
    a, b = load(f'sora/{alias}').to_dict(), load(f'soma/{name}').to_dict()
    assert a == b


def test_release_names_exist():
    for name in SORA_NAMES:
        assert os.path.exists(os.path.join(CONFIGS, 'sora', name)), name


def test_baselines():
    frozen = load('soma/frozen_dinov2-L_mask2former.py')
    fft = load('soma/fft_dinov2-L_mask2former.py')
    assert frozen.model.type == 'FrozenBackboneEncoderDecoder'
    assert fft.model.type == 'FrozenNSEncoderDecoder'
    assert fft.optim_wrapper.paramwise_cfg.custom_keys['backbone'].lr_mult == 0.01
    for cfg in (frozen, fft):
        assert not cfg.model.backbone.lora_cfg
        assert cfg.model.backbone.init_cfg.checkpoint == CKPT_512
        assert cfg.train_dataloader.batch_size == 4
        assert [s['type'] for s in cfg.param_scheduler] == ['PolyLR']
        assert cfg.train_cfg.max_iters == 40000
        assert cfg.optim_wrapper.optimizer.lr == 1e-4


def test_mask2former_head_recipe():
    head = load('_base_/models/dinov2_mask2former.py').model.decode_head
    assert head.type == 'Mask2FormerHead'
    assert (head.num_queries, head.feat_channels, head.out_channels) == (100, 256, 256)
    assert list(head.in_channels) == [1024] * 4 and list(head.strides) == [4, 8, 16, 32]
    assert head.num_transformer_feat_level == 3
    pd = head.pixel_decoder
    assert pd.type == 'mmdet.MSDeformAttnPixelDecoder' and pd.num_outs == 3
    assert pd.encoder.num_layers == 6 and pd.encoder.layer_cfg.self_attn_cfg.num_levels == 3
    assert head.transformer_decoder.num_layers == 9
    assert head.loss_cls.loss_weight == 2.0
    assert list(head.loss_cls.class_weight) == [1.0] * 19 + [0.1]
    assert head.loss_mask.use_sigmoid and head.loss_mask.loss_weight == 5.0
    assert head.loss_dice.loss_weight == 5.0
    assert head.train_cfg.num_points == 12544


# ----------------------------------------------------------------------------- datasets
def write_replica(root_dir, var, n=2):
    """``n`` image/label pairs in the SPEC layout of ``var`` (relative to ``root_dir``)."""
    root, img_dir, seg_dir, img_suffix, seg_suffix, _ = LAYOUT[var]
    rng = np.random.default_rng(0)
    stems = [f'city{i}/city{i}_000000_00001{i}' for i in range(n)]
    for stem in stems:
        img = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        label = rng.integers(0, 19, (48, 64), dtype=np.uint8)
        label[:4] = 255
        for sub, suffix, arr in ((img_dir, img_suffix, img), (seg_dir, seg_suffix, label)):
            path = os.path.join(root_dir, root, sub, stem + suffix)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Image.fromarray(arr).save(path)
    if var == 'train_cityscapes_1_16':
        with open(os.path.join(root_dir, root, 'train_1_16_v1.txt'), 'w') as f:
            f.write(stems[0] + '\n')  # the split names one of the two images
    return stems


DATASET_CASES = [(f, v) for f, vs in sorted(DATASET_FILES.items()) for v in vs]


@pytest.mark.parametrize('rel,var', DATASET_CASES)
def test_dataset_config_on_disk(rel, var, tmp_path, monkeypatch):
    from mmseg.registry import DATASETS
    cfg = load(f'_base_/datasets/{rel}')
    ds_cfg = cfg[var]
    scale = check_layout(ds_cfg, var)
    expected_scale = LAYOUT[var][5]
    if var == 'val_bdd' and rel.endswith('1024x1024.py'):
        expected_scale = (2048, 1024)  # the release evaluates its 1024 models so
    assert scale == expected_scale
    if var.startswith('train'):
        crop = 1024 if '1024' in rel else 512
        check_train_pipeline(ds_cfg.pipeline, crop,
                             'short' if crop == 512 or var == 'train_cityscapes' else 'random')
    stems = write_replica(tmp_path, var)
    monkeypatch.chdir(tmp_path)  # the configs' relative data roots
    with mmseg_scope():
        dataset = DATASETS.build(copy.deepcopy(ds_cfg))
        n = 1 if var == 'train_cityscapes_1_16' else 2
        assert len(dataset) == n
        info = dataset.get_data_info(0)
        assert info['img_path'].endswith(stems[0] + LAYOUT[var][3])
        assert info['seg_map_path'].endswith(stems[0] + LAYOUT[var][4])
        sample = dataset[0]
    img = sample['inputs']
    assert img.dtype == torch.uint8 and img.shape[0] == 3
    if var.startswith('train'):
        crop = 1024 if '1024' in rel else 512
        assert max(img.shape[1:]) <= crop
        assert sample['data_samples'].gt_sem_seg.data.shape[1:] == img.shape[1:]
    elif var.startswith('val'):
        # resized to the test scale (keep ratio), label left at full resolution
        sx, sy = expected_scale
        factor = min(max(sx, sy) / 64, min(sx, sy) / 48)
        assert tuple(img.shape[1:]) == (int(48 * factor + 0.5), int(64 * factor + 0.5))
        assert sample['data_samples'].gt_sem_seg.data.shape[1:] == (48, 64)


def first_key(path, keys):
    return next((k for k in keys if k in path), None)


@pytest.mark.parametrize('rel', sorted(DG))
def test_dg_setup_on_disk(rel, tmp_path, monkeypatch):
    """Train/val ConcatDatasets build; each target's images go to their own metric key."""
    from mmseg.registry import DATASETS
    train_vars, val_vars, keys, mean_keys = DG[rel]
    cfg = load(f'_base_/datasets/{rel}')
    ev = cfg.val_evaluator
    assert ev.type == 'DGIoUMetric' and list(ev.iou_metrics) == ['mIoU']
    assert list(ev.dataset_keys) == keys and list(ev.mean_used_keys) == mean_keys
    assert cfg.test_evaluator == ev and cfg.test_dataloader == cfg.val_dataloader
    for var in train_vars + val_vars:
        write_replica(tmp_path, var)
    monkeypatch.chdir(tmp_path)
    with mmseg_scope():
        train = DATASETS.build(copy.deepcopy(cfg.train_dataloader.dataset))
        val = DATASETS.build(copy.deepcopy(cfg.val_dataloader.dataset))
    expected_train = sum(1 if v == 'train_cityscapes_1_16' else 2 for v in train_vars)
    assert len(train) == expected_train
    assert len(val) == 2 * len(val_vars)
    seen = []
    for var, sub in zip(val_vars, val.datasets):
        paths = [sub.get_data_info(i)['img_path'] for i in range(len(sub))]
        got = {first_key(p, keys) for p in paths}
        assert len(got) == 1 and None not in got, (var, paths)
        seen.append(got.pop())
    assert len(set(seen)) == len(val_vars)  # one key per target
    assert set(seen) == set(keys)
