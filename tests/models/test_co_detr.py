"""Co-DETR (Co-DINO) on a tiny DINOv2: training, auxiliary heads and positive queries,
predictions, transformer initialisation, SoMA freezing rules, the DGOD configs."""
import copy
import glob
import math
import os.path as osp

import pytest
import torch
from mmdet.structures import DetDataSample
from mmengine.config import Config
from mmengine.structures import InstanceData

import soma  # noqa: F401  (registers everything)
from soma.models.detectors.co_dino_head import MIN_POS_COORDS
from soma.registry import DET_MODELS

DEFAULT_SCOPE = 'mmdet'
ONE_THREAD = True  # see tests/conftest.py

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DGOD = osp.join(REPO, 'DGOD', 'configs')
DEMO = osp.join(DGOD, 'demo', 'soma_tiny_codetr_demo.py')
MAIN = osp.join(DGOD, 'soma', 'soma_dinov2-L_codetr_dg.py')
IMG = 64


def tiny_cfg(detector='CoDETR', **overrides):
    """The demo's tiny Co-DETR at 64 px (embed 64, 2+2 transformer layers, 30 queries)."""
    cfg = copy.deepcopy(Config.fromfile(DEMO).model)
    cfg.type = detector
    cfg.backbone.img_size = IMG
    if detector == 'CoDETR':
        cfg.backbone.lora_cfg = None
    cfg.test_cfg[0] = dict(max_per_img=20, nms=dict(type='soft_nms', iou_threshold=0.8))
    cfg.update(overrides)
    return cfg


def build(detector='CoDETR', **overrides):
    torch.manual_seed(0)
    model = DET_MODELS.build(tiny_cfg(detector, **overrides))
    model.init_weights()
    return model


def make_batch(n=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    boxes = [torch.tensor([[4., 6., 30., 40.], [34., 20., 60., 58.]]),
             torch.tensor([[10., 10., 50., 34.]])]
    for i in range(n):
        inputs.append(torch.randint(0, 255, (3, IMG, IMG), generator=gen).float())
        sample = DetDataSample(metainfo=dict(
            img_shape=(IMG, IMG), ori_shape=(IMG, IMG), scale_factor=(1.0, 1.0),
            batch_input_shape=(IMG, IMG), pad_shape=(IMG, IMG), img_path=f'img{i}.jpg'))
        labels = torch.tensor([i % 7, (i + 3) % 7][:len(boxes[i % 2])])
        sample.gt_instances = InstanceData(bboxes=boxes[i % 2], labels=labels)
        samples.append(sample)
    return torch.stack(inputs), samples


def loss_of(model, batch):
    inputs, samples = batch
    data = model.data_preprocessor(dict(inputs=list(inputs), data_samples=copy.deepcopy(samples)),
                                   True)
    return model(**data, mode='loss')


@pytest.fixture(scope='module')
def model():
    return build()


@pytest.fixture(scope='module')
def losses(model):
    model.train()
    torch.manual_seed(1)
    return loss_of(model, make_batch())


def test_every_head_contributes_finite_losses(losses):
    expected = [
        'loss_cls', 'loss_bbox', 'loss_iou', 'd0.loss_cls',  # query head, per decoder layer
        'dn_loss_cls', 'dn_loss_bbox', 'dn_loss_iou', 'enc_loss_cls',  # denoising, encoder
        'loss_rpn_cls', 'loss_rpn_bbox',  # RPN
        'loss_cls0', 'loss_bbox0',  # RoI head (index 0)
        'loss_cls1', 'loss_bbox1', 'loss_centerness1',  # ATSS head (index 1)
    ]
    for head in (0, 1):  # positive queries of the RoI head, then of ATSS
        for name in ('cls', 'bbox', 'iou'):
            expected += [f'loss_{name}_aux{head}', f'd0.loss_{name}_aux{head}']
    missing = [k for k in expected if k not in losses]
    assert not missing, f'missing loss keys {missing}'
    for key, value in losses.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            assert torch.isfinite(v).all(), key
    for key in ('loss_cls0', 'loss_cls1', 'loss_rpn_cls', 'loss_cls_aux0', 'loss_cls_aux1'):
        value = losses[key]
        total = sum(v.sum() for v in value) if isinstance(value, list) else value.sum()
        assert total.item() > 0, key


def test_positive_queries_reach_the_decoder(model, losses):
    """Gradients of the aux0 losses alone reach the per-head query projection, the shared
    decoder and the prediction branches; head 1's projection gets none from them."""
    model.zero_grad()
    aux0 = sum(v for k, v in losses.items() if k.endswith('_aux0'))
    aux0.backward(retain_graph=True)
    trans = model.query_head.transformer
    assert trans.aux_pos_trans[0].weight.grad.abs().sum() > 0
    assert trans.aux_pos_trans[1].weight.grad is None or \
        trans.aux_pos_trans[1].weight.grad.abs().sum() == 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in trans.decoder.layers[0].parameters())
    assert model.query_head.cls_branches[0].weight.grad.abs().sum() > 0
    model.zero_grad()


def test_aux_targets_select_and_pad(model):
    """At least 9 and at most max_pos_coords queries; padding with negatives of the head."""
    head = model.query_head
    bg = head.num_classes
    labels = torch.full((2, 500), bg, dtype=torch.long)
    labels[0, :2] = torch.tensor([1, 4])  # 2 positives -> padded to 9
    labels[1, 100:103] = 3
    coords = torch.tensor([8., 8., 40., 40.]).repeat(2, 500, 1)
    metas = [dict(img_shape=(IMG, IMG))] * 2
    aux = head.get_aux_targets(
        dict(coords=coords, labels=labels, targets=coords.clone(), feats=None), metas)
    assert aux['coords'].shape == (2, MIN_POS_COORDS, 4)
    assert aux['labels'][0, :2].tolist() == [1, 4]
    assert (aux['labels'][0, 2:] == bg).all() and (aux['label_weights'] == 1).all()
    assert aux['bbox_weights'][0, :2].all() and not aux['bbox_weights'][0, 2:].any()
    assert torch.allclose(aux['coords'][0, 0], torch.tensor([24., 24., 32., 32.]) / IMG)

    head.use_zero_padding = True  # dummy padding that gets no classification loss
    try:
        aux = head.get_aux_targets(
            dict(coords=coords, labels=labels, targets=coords.clone(), feats=None), metas)
    finally:
        head.use_zero_padding = False
    assert (aux['label_weights'][0, :2] == 1).all() and (aux['label_weights'][0, 2:] == 0).all()
    assert (aux['labels'][0, 2:] == bg).all() and not aux['bbox_weights'][0, 2:].any()

    labels[:, :] = 2  # 500 positives per image -> capped
    aux = head.get_aux_targets(
        dict(coords=coords, labels=labels, targets=coords.clone(), feats=None), metas)
    assert aux['coords'].shape[1] == head.max_pos_coords


def test_training_reduces_the_loss_on_a_fixed_batch():
    model = build()
    model.train()
    batch = make_batch()
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4)
    totals = []
    torch.manual_seed(0)
    for _ in range(8):
        total, _ = model.parse_losses(loss_of(model, batch))
        optim.zero_grad()
        total.backward()
        optim.step()
        assert math.isfinite(total.item())
        totals.append(total.item())
    assert sum(totals[-2:]) / 2 < 0.9 * sum(totals[:2]) / 2, totals


@pytest.mark.parametrize('eval_module', ['detr', 'one-stage', 'two-stage'])
def test_predictions_format(model, eval_module):
    inputs, samples = make_batch()
    model.eval()
    model.eval_module = eval_module
    try:
        with torch.no_grad():
            data = model.data_preprocessor(dict(inputs=list(inputs), data_samples=samples), False)
            results = model(**data, mode='predict')
    finally:
        model.eval_module = 'detr'
    assert len(results) == 2
    for result in results:
        assert isinstance(result, DetDataSample)
        pred = result.pred_instances
        n = len(pred)
        assert pred.bboxes.shape == (n, 4) and pred.scores.shape == (n, )
        assert pred.labels.dtype == torch.long and n > 0
        assert ((pred.labels >= 0) & (pred.labels < 7)).all()
        assert ((pred.bboxes >= 0) & (pred.bboxes <= IMG)).all()
        if eval_module == 'detr':
            assert n <= 20  # test_cfg max_per_img
            assert (pred.scores[:-1] >= pred.scores[1:]).all()


def test_transformer_and_level_embed_initialised():
    """Built without init_weights(): every transformer parameter is already initialised;
    the head's init_weights() re-initialises the transformer explicitly."""
    torch.manual_seed(0)
    head = DET_MODELS.build(tiny_cfg().query_head)
    trans = head.transformer
    for name, param in trans.named_parameters():
        assert torch.isfinite(param).all(), name
    assert 0.7 < trans.level_embed.std().item() < 1.3  # normal_(0, 1)
    assert 0.7 < trans.query_embedding.weight.std().item() < 1.3
    ffn = trans.encoder.layers[0].ffn.layers[0][0].weight  # xavier_uniform
    fan_out, fan_in = ffn.shape
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    assert ffn.abs().max().item() <= bound + 1e-6
    assert abs(ffn.std().item() - bound / math.sqrt(3)) < 0.15 * bound / math.sqrt(3)
    msda = trans.encoder.layers[0].self_attn
    assert msda.sampling_offsets.weight.abs().sum() == 0  # MSDeformAttn's own init
    assert msda.sampling_offsets.bias.abs().sum() > 0
    assert msda.attention_weights.weight.abs().sum() == 0

    with torch.no_grad():
        trans.level_embed.zero_()
        ffn.zero_()
    head.init_weights()
    assert trans.level_embed.std().item() > 0.5
    assert ffn.abs().sum() > 0


def test_num_co_heads_must_cover_the_aux_heads():
    cfg = tiny_cfg()
    cfg.query_head.transformer.num_co_heads = 1
    with pytest.raises(ValueError, match='num_co_heads'):
        DET_MODELS.build(cfg)


def _peft_available():
    import soma.peft as peft
    return hasattr(peft, 'SoMAModel') and hasattr(peft, 'SoMAConfig')


@pytest.mark.skipif(not _peft_available(), reason='soma.peft.SoMAModel not available yet')
def test_soma_freezing_rules_for_the_detector():
    model = build('PEFTBackboneCoDETR')
    model.train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    backbone = {n for n in trainable if n.startswith('backbone.')}
    lora_cfg = tiny_cfg('PEFTBackboneCoDETR').backbone.lora_cfg
    targets = tuple(f'.{t}.bias' for t in lora_cfg.target_modules)
    for name in backbone:  # backbone.model.blocks.<i>.<...>
        block = int(name.split('.')[3]) if '.blocks.' in name else -1
        assert 'lora_' in name or name.endswith('mask_token') or (
            name.endswith(targets) and block >= lora_cfg.start_lora_idx), name
    assert any('lora_A' in n for n in backbone) and 'backbone.model.mask_token' in backbone
    for name, param in model.named_parameters():
        if not name.startswith('backbone.'):
            assert param.requires_grad, name
    # frozen keywords stay frozen after every train()
    for name, param in model.backbone.named_parameters():
        if any(k in name for k in ('norm1', 'ls1', 'pos_embed', 'patch_embed')):
            param.requires_grad = True
    model.train()
    for name, param in model.backbone.named_parameters():
        if any(k in name for k in ('norm1', 'norm2', 'ls1', 'ls2', 'pos_embed', 'patch_embed')):
            assert not param.requires_grad, name
    # the SVD ran after init_weights: the adapters are not zero
    lora_b = [p for n, p in model.backbone.named_parameters() if 'lora_B' in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)
    losses = loss_of(model, make_batch())
    total, _ = model.parse_losses(losses)
    total.backward()
    assert model.backbone.model.blocks[3].attn.q.lora_A.weight.grad.abs().sum() > 0


def test_frozen_backbone_detector():
    model = build('FrozenBackboneCoDETR')
    model.train()
    assert not model.backbone.training
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for n, p in model.named_parameters()
               if n.startswith(('neck.', 'query_head.', 'rpn_head.')))
    feats = model.extract_feat(make_batch()[0] / 255.0)
    assert len(feats) == 5 and feats[0].requires_grad  # the neck trains


def test_dgod_configs_load_and_main_builds_with_a_tiny_backbone():
    paths = sorted(glob.glob(osp.join(DGOD, '**', '*.py'), recursive=True))
    assert len(paths) >= 17
    for path in paths:
        cfg = Config.fromfile(path)
        if '_base_' not in path:  # the runnable configs
            assert cfg.default_scope == 'mmdet' and cfg.model.type.endswith('CoDETR'), path
    for path in (MAIN, osp.join(DGOD, 'sora', 'sora_dinov2-L_codetr_dg.py')):
        cfg = Config.fromfile(path)
        assert cfg.model.type == 'PEFTBackboneCoDETR'
        assert cfg.model.query_head.num_query == 900
        assert cfg.model.query_head.dn_cfg.group_cfg.num_dn_queries == 100
        assert cfg.optim_wrapper.optimizer.lr == 2e-4
        assert cfg.optim_wrapper.clip_grad.max_norm == 35
        assert cfg.optim_wrapper.paramwise_cfg.custom_keys.backbone == dict(
            lr_mult=0.5, decay_mult=0.2)
        assert cfg.train_cfg.max_iters == 40000
        assert [s['type'] for s in cfg.param_scheduler] == [
            'LinearLR', 'MultiStepLR', 'CosineAnnealingParamScheduler']
        assert cfg.val_evaluator.type == 'DGVOCMetric'
        assert len(cfg.val_dataloader.dataset.datasets) == 5
    cfg = Config.fromfile(MAIN).model
    cfg.type = 'CoDETR'  # the SoMA wrapper is covered above; here the release-size heads
    cfg.backbone = dict(type='DinoVisionTransformer', img_size=64, patch_size=16,
                        embed_dim=64, depth=4, num_heads=2, out_indices=[0, 1, 2, 3])
    cfg.neck.in_channels = [64] * 4
    model = DET_MODELS.build(cfg)
    assert model.query_head.transformer.query_embedding.weight.shape == (900, 256)
    assert len(model.query_head.transformer.encoder.layers) == 6
    assert len(model.query_head.transformer.decoder.layers) == 6
    assert model.query_head.transformer.num_co_heads == 2
    assert model.query_head.cls_branches[0].out_features == 7


def test_positive_queries_with_coordinate_features():
    """with_coord_feat: the pooled RoI / anchor features also feed the positive queries."""
    cfg = tiny_cfg()
    cfg.query_head.transformer.with_coord_feat = True
    torch.manual_seed(0)
    model = DET_MODELS.build(cfg)
    model.init_weights()
    model.train()
    losses = loss_of(model, make_batch())
    aux = sum(v for k, v in losses.items() if '_aux' in k)
    assert torch.isfinite(aux)
    aux.backward()
    for head in (0, 1):  # RoI head (pooled RoI features), ATSS (per-anchor features)
        assert model.query_head.transformer.pos_feats_trans[head].weight.grad.abs().sum() > 0


@pytest.mark.skipif(not _peft_available(), reason='soma.peft.SoMAModel not available yet')
def test_soma_svd_runs_on_the_pretrained_backbone(tmp_path):
    """init_cfg=Pretrained: after init_weights() every adapted layer computes exactly the
    pretrained layer (W_res + s*B@A == W_pretrained, B@A != 0); other blocks are untouched."""
    from soma.models.backbones.dinov2 import DinoVisionTransformer
    from soma.utils.checkpoint_io import save_checkpoint_file
    cfg = tiny_cfg('PEFTBackboneCoDETR')
    torch.manual_seed(123)
    pretrained = DinoVisionTransformer(**{k: v for k, v in cfg.backbone.items()
                                          if k not in ('type', 'lora_cfg')}).state_dict()
    path = str(tmp_path / 'backbone.pth')
    save_checkpoint_file({'state_dict': pretrained}, path)
    cfg.backbone.init_cfg = dict(type='Pretrained', checkpoint=path)
    torch.manual_seed(0)
    model = DET_MODELS.build(cfg)
    model.init_weights()
    lora = cfg.backbone.lora_cfg
    scale = lora.lora_alpha / lora.r
    inner = model.backbone.model
    q = inner.blocks[lora.start_lora_idx].attn.q
    delta = scale * q.lora_B.weight @ q.lora_A.weight
    assert delta.abs().max() > 0
    torch.testing.assert_close(q.weight + delta,
                               pretrained[f'blocks.{lora.start_lora_idx}.attn.q.weight'],
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(inner.blocks[0].attn.q.weight, pretrained['blocks.0.attn.q.weight'],
                               atol=0, rtol=0)
