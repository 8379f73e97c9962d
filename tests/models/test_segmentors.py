"""The three segmentors: what trains, what stays frozen, and a few real Runner iterations."""
import copy
import os.path as osp

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.registry import init_default_scope
from mmengine.runner import Runner

import soma  # noqa: F401
from soma.apis.demo import demo_config
from soma.datasets import make_synthetic_dg_benchmark
from soma.peft.config import ALWAYS_FROZEN_KEYWORDS
from conftest import TINY_FCN_HEAD  # noqa: E402

SIZE = 64
FCN_HEAD = TINY_FCN_HEAD


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('synthetic_seg')
    make_synthetic_dg_benchmark(root, num_train=4, num_val=1, size=(SIZE, SIZE))
    return str(root)


def tiny_cfg(data_root, work_dir, model_type, head='fcn', iters=2):
    cfg = demo_config(data_root, work_dir, iters, val=False, image_size=SIZE)
    cfg.model.type = model_type
    if head == 'fcn':
        cfg.model.decode_head = copy.deepcopy(FCN_HEAD)
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint.interval = iters
    return cfg


def build_model(data_root, tmp_path, model_type, head='fcn'):
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    cfg = tiny_cfg(data_root, tmp_path, model_type, head)
    return MODELS.build(cfg.model)


def _block(name):
    parts = name.split('.')
    return int(parts[parts.index('blocks') + 1]) if 'blocks' in parts else None


def test_peft_keys_and_trainable_set(data_root, tmp_path):
    model = build_model(data_root, tmp_path, 'PEFTBackboneEncoderDecoder')
    model.init_weights()
    names = [n for n, _ in model.named_parameters()]
    assert all(n.startswith('backbone.model.') for n in names if n.startswith('backbone.'))
    assert 'backbone.model.blocks.2.attn.q.lora_A.weight' in names
    assert 'backbone.model.blocks.1.attn.q.lora_A.weight' not in names  # start_lora_idx=2
    lora = model.backbone.model.blocks[2].attn.q.lora_A.weight
    assert lora.shape == (8, 64)  # r x in
    targets = ('q', 'k', 'v', 'proj', 'fc1', 'fc2')
    for name, param in model.backbone.named_parameters():
        block = _block(name)
        expect = ('lora_' in name or name.endswith('mask_token')
                  or (name.endswith('.bias') and block is not None and block >= 2
                      and name.split('.')[-2] in targets))
        assert param.requires_grad == expect, name
    assert all(p.requires_grad for p in model.decode_head.parameters())


def test_peft_refreezes_at_every_train_call(data_root, tmp_path):
    model = build_model(data_root, tmp_path, 'PEFTBackboneEncoderDecoder')
    model.init_weights()
    for name, param in model.backbone.named_parameters():
        param.requires_grad = True  # e.g. a careless hook
    model.train()
    for name, param in model.backbone.named_parameters():
        if any(k in name for k in ALWAYS_FROZEN_KEYWORDS) or _block(name) in (0, 1):
            assert not param.requires_grad, name


def test_peft_model_with_merged_backbone_still_switches_modes(data_root, tmp_path):
    """After ``merge_and_unload()`` (plain ``nn.Linear``) ``train()``/``eval()`` just work."""
    model = build_model(data_root, tmp_path, 'PEFTBackboneEncoderDecoder')
    model.init_weights()
    model.backbone = model.backbone.merge_and_unload()
    model.train()
    model.eval()
    assert not any('lora_' in n for n, _ in model.named_parameters())


def test_peft_svd_runs_after_init_weights_on_the_loaded_weights(data_root, tmp_path):
    """Backbone from a checkpoint via init_cfg: the adapters hold ITS minor components."""
    from soma.models.backbones.dinov2 import DinoVisionTransformer
    torch.manual_seed(3)
    pretrained = DinoVisionTransformer(img_size=SIZE, patch_size=16, embed_dim=64, depth=4,
                                       num_heads=2, init_values=1.0, out_indices=[0, 1, 2, 3])
    path = str(tmp_path / 'converted.pth')
    torch.save(pretrained.state_dict(), path)
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    cfg = tiny_cfg(data_root, tmp_path, 'PEFTBackboneEncoderDecoder')
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=path)
    model = MODELS.build(cfg.model)
    model.init_weights()
    layer = model.backbone.model.blocks[3].mlp.fc1
    w = pretrained.blocks[3].mlp.fc1.weight.detach().double()
    s = 8 / 8  # lora_alpha / r
    ba = s * layer.lora_B.weight.double() @ layer.lora_A.weight.double()
    torch.testing.assert_close(layer.weight.double() + ba, w, rtol=0, atol=1e-5)
    u, sv, vh = torch.linalg.svd(w, full_matrices=False)  # float64 reference
    minor = u[:, -8:] @ torch.diag(sv[-8:]) @ vh[-8:]
    torch.testing.assert_close(ba, minor, rtol=0, atol=1e-5)


def test_frozen_backbone_no_grad_and_eval_mode(data_root, tmp_path):
    model = build_model(data_root, tmp_path, 'FrozenBackboneEncoderDecoder')
    model.train()
    assert not model.backbone.training and model.decode_head.training
    assert not any(p.requires_grad for p in model.backbone.parameters())
    feats = model.extract_feat(torch.randn(1, 3, SIZE, SIZE))
    assert not any(f.requires_grad for f in feats)


def test_frozen_ns_trains_everything_but_norm_scale_embeddings(data_root, tmp_path):
    model = build_model(data_root, tmp_path, 'FrozenNSEncoderDecoder')
    for p in model.parameters():
        p.requires_grad = True
    model.train()
    for name, param in model.backbone.named_parameters():
        assert param.requires_grad == (not any(k in name for k in ALWAYS_FROZEN_KEYWORDS)), name


class _ModeProbe(Hook):
    """Records, during training, the backbone mode and the parameters that require grad."""

    def __init__(self):
        self.modes, self.trainable, self.before = [], set(), None

    def before_train(self, runner):  # after init_weights / load_from
        self.before = {k: v.clone() for k, v in runner.model.state_dict().items()}

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        model = runner.model
        self.modes.append(model.backbone.training)
        self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        self.losses = {k: float(v.detach()) for k, v in outputs.items()}


@pytest.mark.parametrize('model_type,head', [
    ('PEFTBackboneEncoderDecoder', 'mask2former'),
    ('FrozenBackboneEncoderDecoder', 'fcn'),
    ('FrozenNSEncoderDecoder', 'fcn'),
])
def test_a_few_training_iterations(data_root, tmp_path, model_type, head):
    cfg = tiny_cfg(data_root, str(tmp_path / 'work'), model_type, head, iters=2)
    probe = _ModeProbe()
    runner = Runner.from_cfg(cfg)
    runner.register_hook(probe)
    runner.train()
    before, after = probe.before, runner.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert all(torch.isfinite(torch.tensor(v)) for v in probe.losses.values())
    assert any(k.startswith('decode_head.') for k in changed)
    backbone_changed = {k for k in changed if k.startswith('backbone.')}
    if model_type == 'FrozenBackboneEncoderDecoder':
        assert not backbone_changed
        assert probe.modes == [False, False]
    elif model_type == 'PEFTBackboneEncoderDecoder':
        assert backbone_changed and all('lora_' in k or k.endswith('.bias')
                                        or k.endswith('mask_token') for k in backbone_changed)
        assert not any('.blocks.0.' in k or '.blocks.1.' in k for k in backbone_changed)
    else:
        assert any('.attn.q.weight' in k for k in backbone_changed)
        assert not any(kw in k for k in backbone_changed for kw in ALWAYS_FROZEN_KEYWORDS)
    assert osp.isfile(osp.join(cfg.work_dir, 'iter_2.pth'))


def test_peft_construction_mode_svd_of_pytorch_default_init(data_root, tmp_path):
    """svd_init_on='construction' through the segmentor (the release's order): the SVD at
    build time sees nn.Linear's default init, drawn in the backbone's construction order."""
    from mmseg.registry import MODELS
    from torch import nn
    init_default_scope('mmseg')
    cfg = tiny_cfg(data_root, tmp_path, 'PEFTBackboneEncoderDecoder')
    cfg.model.backbone.lora_cfg.svd_init_on = 'construction'
    bb = cfg.model.backbone
    torch.manual_seed(21)
    model = MODELS.build(cfg.model)
    torch.manual_seed(21)  # reference: the same generator state, DINOv2's module order
    nn.Conv2d(3, bb.embed_dim, bb.patch_size, bb.patch_size)
    hidden = int(bb.embed_dim * bb.mlp_ratio)
    ref = {}
    for i in range(bb.depth):
        for name, fan_in, fan_out in [('attn.q', bb.embed_dim, bb.embed_dim),
                                      ('attn.k', bb.embed_dim, bb.embed_dim),
                                      ('attn.v', bb.embed_dim, bb.embed_dim),
                                      ('attn.proj', bb.embed_dim, bb.embed_dim),
                                      ('mlp.fc1', bb.embed_dim, hidden),
                                      ('mlp.fc2', hidden, bb.embed_dim)]:
            ref[f'blocks.{i}.{name}'] = nn.Linear(fan_in, fan_out)
    layers = model.backbone.adapted_layers()
    assert len(layers) == 12
    r = bb.lora_cfg.r
    for name, layer in layers.items():
        w = ref[name].weight.detach().double()
        ba = layer.scaling * layer.lora_B.weight.double() @ layer.lora_A.weight.double()
        torch.testing.assert_close(layer.weight.double() + ba, w, rtol=0, atol=1e-6)
        u, sv, vh = torch.linalg.svd(w, full_matrices=False)  # float64 reference
        minor = u[:, -r:] @ torch.diag(sv[-r:]) @ vh[-r:]
        torch.testing.assert_close(ba, minor, rtol=0, atol=1e-5)
        assert torch.equal(layer.bias, ref[name].bias)


def test_peft_predicts_full_size_on_non_multiple_of_16_input(data_root, tmp_path):
    """A 70x90 image: the backbone drops the 6/10-pixel remainder (4x5 grid), mmseg resizes
    the prediction to the full image. Seg logits equal the head called by hand on the
    features of the top-left 64x80 crop, upsampled to 70x90."""
    from mmseg.structures import SegDataSample
    model = build_model(data_root, tmp_path, 'PEFTBackboneEncoderDecoder', head='mask2former')
    model.init_weights()
    model.eval()
    image = torch.randint(0, 256, (3, 70, 90), generator=torch.Generator().manual_seed(4),
                          dtype=torch.uint8)
    meta = dict(img_shape=(70, 90), ori_shape=(70, 90))
    with torch.no_grad():
        out = model.test_step(dict(inputs=[image],
                                   data_samples=[SegDataSample(metainfo=dict(meta))]))[0]
        x = model.data_preprocessor(dict(inputs=[image]), False)['inputs']
        feats = model.backbone(x[..., :64, :80])
        assert all(f.is_contiguous() for f in feats)
        ref = model.decode_head.predict(feats, [dict(meta)], model.test_cfg)
    assert out.pred_sem_seg.data.shape == (1, 70, 90)
    assert out.seg_logits.data.shape == ref.shape[1:]
    torch.testing.assert_close(out.seg_logits.data, ref[0], rtol=1e-4, atol=1e-5)
    assert torch.equal(out.pred_sem_seg.data[0], ref[0].argmax(0))
