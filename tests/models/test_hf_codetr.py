"""Co-DETR on a tiny DINOv3 (HFVisionBackbone): DGOD/configs/soma/soma_dinov3-L_codetr_dg.py.

The config keeps the DINOv2-L Co-DETR recipe but for the backbone; with the backbone model
swapped for a tiny saved DINOv3 folder and the demo's tiny heads, a few optimizer steps run
with the config's own optimizer wrapper. At every step the maps fed to the neck are checked
against transformers' own hidden states of a plain DINOv3ViTModel holding the effective
weights ``W_res + s * B @ A`` (computed here by hand), rearranged as the issue says; the
trainable set is SoMA's rules written out here, and frozen tensors never move.
"""
import copy
import os.path as osp

import pytest
import torch
import torch.nn.functional as F
import transformers
from mmdet.structures import DetDataSample
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.structures import InstanceData

import soma  # noqa: F401  (registers everything)
from soma.registry import DET_MODELS

DEFAULT_SCOPE = 'mmdet'
ONE_THREAD = True  # see tests/conftest.py
REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DGOD = osp.join(REPO, 'DGOD', 'configs')
DINOV3 = osp.join(DGOD, 'soma', 'soma_dinov3-L_codetr_dg.py')
DINOV2 = osp.join(DGOD, 'soma', 'soma_dinov2-L_codetr_dg.py')
DEMO = osp.join(DGOD, 'demo', 'soma_tiny_codetr_demo.py')
IMG, WIDTH, DEPTH, R, ALPHA = 64, 32, 4, 4, 8
TARGETS = ('q_proj', 'k_proj', 'v_proj', 'o_proj', 'up_proj', 'down_proj')


def test_config_is_the_dinov2_recipe_but_for_the_backbone():
    cfg, ref = Config.fromfile(DINOV3).to_dict(), Config.fromfile(DINOV2).to_dict()
    backbone = cfg['model'].pop('backbone')
    ref['model'].pop('backbone')
    assert cfg == ref
    assert backbone['type'] == 'HFVisionBackbone'
    assert backbone['model'] == 'checkpoints/dinov3-vitl16-pretrain-lvd1689m'
    assert backbone['out_indices'] == [7, 11, 15, 23]
    lora = backbone['lora_cfg']
    assert (lora['r'], lora['lora_alpha'], lora['start_lora_idx']) == (16, 16, 24 // 3)
    assert lora['target_modules'] == list(TARGETS) and lora['layers_pattern'] == 'layer'


@pytest.fixture(scope='module')
def dinov3_folder(tmp_path_factory):
    """A tiny DINOv3 saved as transformers writes it; no RoPE jitter (train == eval)."""
    config = transformers.DINOv3ViTConfig(
        hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=2,
        intermediate_size=64, num_register_tokens=4, patch_size=16, image_size=IMG,
        layerscale_value=0.5, pos_embed_rescale=None)
    torch.manual_seed(0)
    model = transformers.DINOv3ViTModel(config).eval()
    folder = str(tmp_path_factory.mktemp('dinov3') / 'tiny')
    model.save_pretrained(folder)
    return folder, model


def _tiny_cfg(folder):
    """The DINOv3 config's backbone on the tiny folder, the demo's tiny Co-DINO heads."""
    cfg = Config.fromfile(DINOV3)
    model = copy.deepcopy(Config.fromfile(DEMO).model)
    backbone = copy.deepcopy(cfg.model.backbone)
    backbone.update(model=folder, out_indices=[0, 1, 2, 3])
    backbone.lora_cfg.update(r=R, lora_alpha=ALPHA)
    backbone.lora_cfg.pop('start_lora_idx')  # the default: the first third (1 of 4) frozen
    model.backbone = backbone
    model.neck.in_channels = [WIDTH] * 4
    model.test_cfg[0] = dict(max_per_img=20, nms=dict(type='soft_nms', iou_threshold=0.8))
    assert model.type == cfg.model.type == 'PEFTBackboneCoDETR'
    return model, cfg.optim_wrapper


def _batch(model, n=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    boxes = [torch.tensor([[4., 6., 30., 40.], [34., 20., 60., 58.]]),
             torch.tensor([[10., 10., 50., 34.]])]
    inputs, samples = [], []
    for i in range(n):
        inputs.append(torch.randint(0, 255, (3, IMG, IMG), generator=gen).float())
        sample = DetDataSample(metainfo=dict(
            img_shape=(IMG, IMG), ori_shape=(IMG, IMG), scale_factor=(1.0, 1.0),
            batch_input_shape=(IMG, IMG), pad_shape=(IMG, IMG), img_path=f'img{i}.jpg'))
        sample.gt_instances = InstanceData(bboxes=boxes[i % 2],
                                           labels=torch.tensor([1, 4][:len(boxes[i % 2])]))
        samples.append(sample)
    return model.data_preprocessor(dict(inputs=inputs, data_samples=samples), True)


def _block(name):
    parts = name.split('.')
    return int(parts[parts.index('layer') + 1]) if 'layer' in parts else None


def _effective_transformers_model(reference, detector):
    """A plain DINOv3ViTModel with the detector's current backbone weights, the adapters
    folded by hand: W = W_res + (alpha / r) * B @ A."""
    state = {k[len('backbone.model.hf_model.'):]: v.detach()
             for k, v in detector.state_dict().items()
             if k.startswith('backbone.model.hf_model.')}
    plain = {}
    for key, value in state.items():
        if '.lora_' in key:
            continue
        stem = key[:-len('.weight')]
        if key.endswith('.weight') and stem + '.lora_A.weight' in state:
            a, b = state[stem + '.lora_A.weight'], state[stem + '.lora_B.weight']
            value = value + (ALPHA / R) * b @ a
        plain[key] = value
    model = copy.deepcopy(reference)
    model.load_state_dict(plain, strict=True)
    return model.eval()


def _expected_maps(model, x):
    h, w = x.shape[-2] // 16, x.shape[-1] // 16
    with torch.no_grad():
        hidden = model(pixel_values=x, output_hidden_states=True).hidden_states
    maps = []
    for i, scale in zip((0, 1, 2, 3), (4, 2, 1, 0.5)):
        tokens = hidden[i + 1][:, 1 + 4:]  # CLS + 4 registers dropped
        fmap = tokens.permute(0, 2, 1).reshape(x.shape[0], WIDTH, h, w)
        maps.append(F.interpolate(fmap, scale_factor=scale, mode='bilinear',
                                  align_corners=False))
    return maps


def test_tiny_dinov3_codetr_trains_with_the_hidden_states_fed_to_the_neck(dinov3_folder):
    folder, reference = dinov3_folder
    model_cfg, optim_cfg = _tiny_cfg(folder)
    torch.manual_seed(0)
    model = DET_MODELS.build(model_cfg)
    model.init_weights()
    model.train()
    assert model.backbone.model.lora_cfg['start_lora_idx'] == DEPTH // 3

    # SoMA's rules, written out: in the backbone only adapters, the mask token and the
    # target biases of blocks >= 1 train (no key bias in DINOv3); every other module trains
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = set()
    for name, _ in model.named_parameters():
        if not name.startswith('backbone.'):
            expected.add(name)
        elif 'lora_' in name or name.endswith('embeddings.mask_token'):
            expected.add(name)
        elif (name.endswith('.bias') and name.rsplit('.', 2)[-2] in TARGETS
              and (_block(name) or 0) >= DEPTH // 3):
            expected.add(name)
    assert trainable == expected
    adapted = {n for n in trainable if n.endswith('lora_A.weight')}
    assert {_block(n) for n in adapted} == {1, 2, 3}
    assert {n.rsplit('.', 3)[-3] for n in adapted} == set(TARGETS)

    optim_cfg = copy.deepcopy(optim_cfg)
    optim_cfg.optimizer.lr = 1e-3
    optim_wrapper = build_optim_wrapper(model, optim_cfg)
    in_optimizer = {id(p) for g in optim_wrapper.optimizer.param_groups for p in g['params']}
    assert in_optimizer == {id(p) for n, p in model.named_parameters() if n in trainable}

    captured = {}
    hooks = [
        model.backbone.register_forward_pre_hook(
            lambda m, args: captured.__setitem__('x', args[0].detach().clone())),
        model.neck.register_forward_pre_hook(
            lambda m, args: captured.__setitem__('feats', [f.detach().clone()
                                                           for f in args[0]])),
    ]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = _batch(model)
    totals = []
    try:
        for _ in range(3):
            ref_model = _effective_transformers_model(reference, model)
            losses = model(**copy.deepcopy(data), mode='loss')
            total, _ = model.parse_losses(losses)
            for got, exp in zip(captured['feats'], _expected_maps(ref_model, captured['x'])):
                torch.testing.assert_close(got, exp, rtol=1e-4, atol=1e-4)
            optim_wrapper.update_params(total)
            totals.append(total.item())
    finally:
        for hook in hooks:
            hook.remove()
    assert all(torch.isfinite(torch.tensor(totals)))
    after = model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and moved <= trainable | {k for k in before if 'num_batches' in k}
    assert any('lora_B' in k for k in moved)
    assert not any(k.startswith('backbone.') and 'lora_' not in k and not k.endswith('.bias')
                   and not k.endswith('mask_token') for k in moved)


def test_adapters_start_from_the_pretrained_weights(dinov3_folder):
    """After init_weights the folded weights are the folder's, in every block."""
    folder, reference = dinov3_folder
    model_cfg, _ = _tiny_cfg(folder)
    torch.manual_seed(0)
    model = DET_MODELS.build(model_cfg)
    model.init_weights()
    folded = _effective_transformers_model(reference, model).state_dict()
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(folded[key], value, rtol=0, atol=1e-6)
    layer = model.backbone.model.hf_model.model.layer[1].attention.q_proj
    assert layer.lora_B.weight.abs().sum() > 0  # the SVD ran on the pretrained weights
