"""Batched sliding windows (``test_cfg.slide_batch_size``) against mmseg's sequential
``EncoderDecoder.slide_inference`` on the same model: overlapping windows, odd image sizes,
batches of two images (same size through the real ``SegDataPreProcessor`` with padding;
different sizes padded to a common shape by mmseg's ``stack_batch``), FCN and Mask2Former."""
import copy

import pytest
import torch
from mmengine.config import ConfigDict
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from mmseg.models.segmentors import EncoderDecoder
from mmseg.structures import SegDataSample
from mmseg.utils import stack_batch

import soma  # noqa: F401
from soma.models.segmentors import slide_windows

CROP, STRIDE = (32, 32), (20, 20)  # overlapping windows
BACKBONE = dict(type='DinoVisionTransformer', img_size=64, patch_size=16, embed_dim=64, depth=2,
                num_heads=2, out_indices=[0, 1, 1, 1], init_cfg=None,
                lora_cfg=dict(type='sora', r=4, lora_alpha=8, target_modules=['q', 'v', 'fc1'],
                              start_lora_idx=1, bias='all'))
FCN = dict(type='FCNHead', in_channels=64, in_index=3, channels=16, num_convs=1,
           concat_input=False, dropout_ratio=0.0, num_classes=5, norm_cfg=None,
           align_corners=False)
MASK2FORMER = dict(
    type='Mask2FormerHead', in_channels=[64] * 4, strides=[4, 8, 16, 32], feat_channels=32,
    out_channels=32, num_classes=5, num_queries=6, num_transformer_feat_level=3,
    align_corners=False,
    pixel_decoder=dict(
        type='mmdet.MSDeformAttnPixelDecoder', num_outs=3,
        norm_cfg=dict(type='GN', num_groups=8), act_cfg=dict(type='ReLU'),
        encoder=dict(num_layers=1, layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=32, num_heads=2, num_levels=3, num_points=2,
                               batch_first=True),
            ffn_cfg=dict(embed_dims=32, feedforward_channels=64))),
        positional_encoding=dict(num_feats=16, normalize=True)),
    enforce_decoder_input_project=False,
    positional_encoding=dict(num_feats=16, normalize=True),
    transformer_decoder=dict(return_intermediate=True, num_layers=2, layer_cfg=dict(
        self_attn_cfg=dict(embed_dims=32, num_heads=2, batch_first=True),
        cross_attn_cfg=dict(embed_dims=32, num_heads=2, batch_first=True),
        ffn_cfg=dict(embed_dims=32, feedforward_channels=64))),
    loss_cls=dict(type='mmdet.CrossEntropyLoss', use_sigmoid=False, loss_weight=2.0,
                  class_weight=[1.0] * 5 + [0.1]),
    train_cfg=dict(num_points=64, oversample_ratio=3.0, importance_sample_ratio=0.75,
                   assigner=dict(type='mmdet.HungarianAssigner', match_costs=[
                       dict(type='mmdet.ClassificationCost', weight=2.0),
                       dict(type='mmdet.CrossEntropyLossCost', weight=5.0, use_sigmoid=True),
                       dict(type='mmdet.DiceCost', weight=5.0, pred_act=True, eps=1.0)]),
                   sampler=dict(type='mmdet.MaskPseudoSampler')))


def build(head, model_type='PEFTBackboneEncoderDecoder', preprocessor_test_cfg=None, seed=0):
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    torch.manual_seed(seed)
    cfg = dict(
        type=model_type,
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True,
                               test_cfg=preprocessor_test_cfg),
        backbone=copy.deepcopy(BACKBONE), decode_head=copy.deepcopy(head),
        test_cfg=dict(mode='slide', crop_size=CROP, stride=STRIDE, slide_batch_size=None))
    if model_type != 'PEFTBackboneEncoderDecoder':
        cfg['backbone'].pop('lora_cfg')
    model = MODELS.build(ConfigDict(cfg))  # as from a config file (attribute access)
    model.init_weights()
    with torch.no_grad():  # random, non-zero adapters
        for name, p in model.named_parameters():
            if 'lora_' in name:
                p.normal_(0, 0.05)
    return model.eval()


def predict_both(model, run, batch_size):
    """``run()`` with mmseg's sequential windows, then batched; both result lists."""
    model.test_cfg['slide_batch_size'] = None
    with torch.no_grad():
        sequential = run()
    model.test_cfg['slide_batch_size'] = batch_size
    with torch.no_grad():
        batched = run()
    return sequential, batched


def assert_same_predictions(sequential, batched):
    assert len(sequential) == len(batched)
    for seq, bat in zip(sequential, batched):
        assert seq.seg_logits.data.shape == bat.seg_logits.data.shape
        torch.testing.assert_close(bat.seg_logits.data, seq.seg_logits.data, rtol=1e-5,
                                   atol=1e-5)
        assert torch.equal(bat.pred_sem_seg.data, seq.pred_sem_seg.data)


def test_windows_are_mmsegs_grid():
    # 45 rows: y = 0, 13 (20 would end past 45: shifted back to 45 - 32); 32 rows fit once
    assert slide_windows(45, 32, CROP, STRIDE) == [(0, 32, 0, 32), (13, 45, 0, 32)]
    assert slide_windows(20, 70, CROP, STRIDE) == [(0, 20, 0, 32), (0, 20, 20, 52),
                                                   (0, 20, 38, 70)]


@pytest.mark.parametrize('batch_size', [1, 4, 64])
def test_batched_equals_sequential_through_the_preprocessor(batch_size):
    # two images 45x71 (odd), padded to 48x80 by the real SegDataPreProcessor (size_divisor)
    model = build(FCN, preprocessor_test_cfg=dict(size_divisor=16))
    gen = torch.Generator().manual_seed(1)
    images = [torch.randint(0, 256, (3, 45, 71), generator=gen, dtype=torch.uint8)
              for _ in range(2)]

    def run():
        samples = [SegDataSample(metainfo=dict(ori_shape=(45, 71), img_shape=(45, 71)))
                   for _ in images]
        return model.test_step(dict(inputs=list(images), data_samples=samples))

    sequential, batched = predict_both(model, run, batch_size)
    assert 'pad_shape' in sequential[0].metainfo  # the padding path of the preprocessor ran
    assert sequential[0].pred_sem_seg.data.shape == (1, 45, 71)
    assert_same_predictions(sequential, batched)


@pytest.mark.parametrize('model_type', ['FrozenBackboneEncoderDecoder', 'FrozenNSEncoderDecoder'])
def test_baselines_batch_their_windows(model_type):
    model = build(FCN, model_type=model_type)
    inputs = torch.randn(1, 3, 51, 37, generator=torch.Generator().manual_seed(2))
    metas = [dict(ori_shape=(51, 37), img_shape=(51, 37))]
    ref = EncoderDecoder.slide_inference(model, inputs, copy.deepcopy(metas))  # mmseg's own
    model.test_cfg['slide_batch_size'] = 3
    with torch.no_grad():
        got = model.slide_inference(inputs, metas)
    assert metas == [dict(ori_shape=(51, 37), img_shape=(51, 37))]  # caller's metas untouched
    torch.testing.assert_close(got, ref.detach(), rtol=1e-5, atol=1e-5)


def test_two_images_of_different_sizes_padded_to_the_batch_shape():
    # mmseg's preprocessor refuses differently sized test images; padded to a common shape
    # by mmseg's stack_batch (what the preprocessor uses), each gets its own padding_size and
    # postprocess_result cuts it off again
    model = build(FCN)
    gen = torch.Generator().manual_seed(3)
    images = [torch.randn(3, 45, 71, generator=gen), torch.randn(3, 61, 39, generator=gen)]

    def run():
        samples = []
        for img in images:
            sample = SegDataSample(metainfo=dict(ori_shape=tuple(img.shape[1:])))
            sample.gt_sem_seg = PixelData(data=torch.zeros(1, *img.shape[1:], dtype=torch.long))
            samples.append(sample)
        inputs, samples = stack_batch(images, samples, size=(61, 71), pad_val=0)
        return model.predict(inputs, samples)

    sequential, batched = predict_both(model, run, 5)
    assert [tuple(s.pred_sem_seg.data.shape) for s in batched] == [(1, 45, 71), (1, 61, 39)]
    assert sequential[1].metainfo['padding_size'] == (0, 32, 0, 0)
    assert_same_predictions(sequential, batched)


def test_mask2former_batched_windows():
    # Mask2Former's query batch comes from the number of windows in a call
    model = build(MASK2FORMER)
    inputs = torch.randn(2, 3, 37, 53, generator=torch.Generator().manual_seed(4))

    def run():
        samples = [SegDataSample(metainfo=dict(ori_shape=(37, 53), img_shape=(37, 53)))
                   for _ in range(2)]
        return model.predict(inputs, samples)

    sequential, batched = predict_both(model, run, 5)  # 2 x 6 windows in calls of 5, 5, 2
    assert_same_predictions(sequential, batched)


def test_bad_slide_batch_size_is_refused_at_build():
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    backbone = {k: v for k, v in BACKBONE.items() if k != 'lora_cfg'}
    cfg = dict(type='FrozenBackboneEncoderDecoder', backbone=backbone, decode_head=FCN,
               test_cfg=dict(mode='slide', crop_size=CROP, stride=STRIDE, slide_batch_size=-2))
    with pytest.raises(ValueError, match='slide_batch_size'):
        MODELS.build(ConfigDict(cfg))
