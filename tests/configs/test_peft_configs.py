"""The peft baseline and ablation configs load, carry the recipe they claim, and their
backbone adapter builds through the seam (on a tiny backbone of the same config)."""
import glob
import os.path as osp

import pytest
from mmengine.config import Config

import soma  # noqa: F401
from soma.models.backbones.dinov2 import DinoVisionTransformer
from soma.models.peft_backbone import trainable_parameter_report, wrap_backbone

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TARGETS = ['q', 'k', 'v', 'proj', 'fc1', 'fc2']
SEG = {m: f'configs/peft_baselines/{m}_dinov2-L_mask2former.py'
       for m in ('lora', 'dora', 'pissa', 'milora', 'mica')}
DET = {m: f'DGOD/configs/peft_baselines/{m}_dinov2-L_codetr_dg.py' for m in ('lora', 'dora')}
ABLATIONS = sorted(osp.relpath(p, REPO) for p in glob.glob(
    osp.join(REPO, 'configs', 'ablations', '*.py')))
SOMA = Config.fromfile(osp.join(REPO, 'configs/soma/soma_dinov2-L_mask2former.py'))


def load(rel):
    return Config.fromfile(osp.join(REPO, rel))


def wd_annealed(cfg):
    return any(s.get('param_name') == 'weight_decay' for s in cfg.param_scheduler)


def tiny_backbone(cfg, depth=16):
    """The config's backbone at embed 32 / 16 blocks (so block 12 exists), adapter as given."""
    b = cfg.model.backbone
    return DinoVisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=depth,
                                 num_heads=2, out_indices=[0, 1, 2, 3],
                                 lora_cfg=b.get('lora_cfg'), peft_cfg=b.get('peft_cfg'))


@pytest.mark.parametrize('method', sorted(SEG))
def test_seg_baselines_keep_the_soma_recipe(method):
    cfg = load(SEG[method])
    for key in ('train_dataloader', 'val_evaluator', 'optim_wrapper', 'train_cfg'):
        assert cfg[key] == SOMA[key], key
    assert not wd_annealed(cfg)  # each method in its standard form
    b = cfg.model.backbone
    adapter = b.peft_cfg if method != 'milora' else b.lora_cfg
    assert (adapter['r'], adapter['target_modules'], adapter['start_lora_idx']) == (
        16, TARGETS, 0)
    if method == 'milora':
        assert not b.get('peft_cfg')
        assert (b.lora_cfg.first_eigen, b.lora_cfg.lora_weight_init) == (False, 'sora')
    else:
        assert b.lora_cfg is None
        assert adapter['type'] == 'LoraConfig' and adapter['lora_alpha'] == 16
        assert adapter['use_dora'] == (method == 'dora')
        assert adapter['init_lora_weights'] == {'lora': True, 'dora': True, 'pissa': 'pissa',
                                                'mica': 'mica'}[method]


@pytest.mark.parametrize('method', sorted(DET))
def test_det_baselines(method):
    cfg = load(DET[method])
    soma_det = load('DGOD/configs/soma/soma_dinov2-L_codetr_dg.py')
    assert cfg.model.type == 'PEFTBackboneCoDETR' and cfg.model.backbone.lora_cfg is None
    assert cfg.model.backbone.peft_cfg.use_dora == (method == 'dora')
    assert cfg.optim_wrapper == soma_det.optim_wrapper
    assert not wd_annealed(cfg) and wd_annealed(soma_det)


@pytest.mark.parametrize('rel', sorted(SEG.values()) + sorted(DET.values()) + ABLATIONS)
def test_adapter_builds_through_the_seam(rel):
    cfg = load(rel)
    backbone = wrap_backbone(tiny_backbone(cfg))
    report = trainable_parameter_report(backbone)
    b = cfg.model.backbone
    start = (b.get('peft_cfg') or b.get('lora_cfg'))['start_lora_idx']
    assert report['trainable'] > 0
    assert all(report['per_block'][i][0] == 0 for i in range(start))
    assert all(report['per_block'][i][0] > 0 for i in range(start, 16))


def test_ablation_grid():
    names = {osp.basename(p)[len('soma_dinov2-L_mask2former_'):-3]: load(p) for p in ABLATIONS}
    assert set(names) == {'minor', 'principal', 'random', 'start0', 'start4', 'start8',
                          'start12', 'wd_anneal_on', 'wd_anneal_off', 'r4', 'r8', 'r16', 'r32'}
    lora = {k: c.model.backbone.lora_cfg for k, c in names.items()}
    assert lora['minor'] == SOMA.model.backbone.lora_cfg
    assert lora['principal'].first_eigen and not lora['minor'].first_eigen
    assert lora['random'].lora_weight_init == 'sora_random'
    assert [lora[f'start{i}'].start_lora_idx for i in (0, 4, 8, 12)] == [0, 4, 8, 12]
    assert [(lora[f'r{r}'].r, lora[f'r{r}'].lora_alpha) for r in (4, 8, 16, 32)] == [
        (4, 4), (8, 8), (16, 16), (32, 32)]
    assert wd_annealed(names['wd_anneal_on']) and not wd_annealed(names['wd_anneal_off'])
    for key, cfg in names.items():
        if key != 'wd_anneal_off':
            assert cfg.param_scheduler == SOMA.param_scheduler, key
        assert cfg.train_dataloader == SOMA.train_dataloader
