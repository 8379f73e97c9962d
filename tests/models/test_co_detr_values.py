"""Co-DETR values against independent references, on a tiny Co-DETR at 64 px.

References: mmcv's RoIAlign on contiguous copies of the encoder maps; mmdet 3.3's own DINO
pipeline (``pre_transformer`` .. ``forward_decoder`` of its ``DINO`` detector, run on our
query head's modules) with the release's box formula written out by hand; mmdet's
``DINOHead.loss_by_feat``, ``RPNHead``, ``StandardRoIHead`` and ``ATSSHead`` methods called
unbound on our heads; mmcv's ``batched_nms`` (soft-NMS) for the DETR predictions.
"""
import copy
import math
import os.path as osp

import pytest
import torch
from mmcv.ops import batched_nms, roi_align
from mmdet.models.dense_heads import ATSSHead, DINOHead, RPNHead
from mmdet.models.detectors import DINO, DeformableDETR
from mmdet.models.layers.transformer import inverse_sigmoid
from mmdet.models.roi_heads import StandardRoIHead
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy
from mmengine.config import Config
from mmengine.structures import InstanceData

import soma  # noqa: F401  (registers everything)
from soma.registry import DET_MODELS

DEFAULT_SCOPE = 'mmdet'
ONE_THREAD = True  # see tests/conftest.py

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO = osp.join(REPO, 'DGOD', 'configs', 'demo', 'soma_tiny_codetr_demo.py')
IMG = 64
SCALE = (0.5, 0.75)  # (w, h) resize factor of the test images
EXACT = dict(rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- set-up


@pytest.fixture(scope='module')
def model():
    """The demo's tiny Co-DETR (embed 64, 2+2 layers, 30 queries), no dropout, eval mode."""
    cfg = copy.deepcopy(Config.fromfile(DEMO).model)
    cfg.type = 'CoDETR'
    cfg.backbone.update(img_size=IMG, lora_cfg=None)
    cfg.test_cfg[0] = dict(max_per_img=50, nms=dict(type='soft_nms', iou_threshold=0.8))
    torch.manual_seed(0)
    model = DET_MODELS.build(cfg)
    model.init_weights()
    model.eval()
    for m in model.modules():
        assert not isinstance(m, torch.nn.Dropout) or m.p == 0, m
    return model


def make_batch(model, training, scale=(1.0, 1.0)):
    """Two 64 px images with boxes; ``scale``: the (w, h) factor from the original image."""
    gen = torch.Generator().manual_seed(0)
    boxes = [torch.tensor([[4., 6., 30., 40.], [34., 20., 60., 58.]]),
             torch.tensor([[10., 10., 50., 34.], [0., 30., 64., 64.]])]
    ori_shape = (round(IMG / scale[1]), round(IMG / scale[0]))
    inputs, samples = [], []
    for i in range(2):
        inputs.append(torch.randint(0, 255, (3, IMG, IMG), generator=gen).float())
        sample = DetDataSample(metainfo=dict(
            img_shape=(IMG, IMG), ori_shape=ori_shape, scale_factor=scale,
            img_path=f'img{i}.jpg'))
        sample.gt_instances = InstanceData(bboxes=boxes[i], labels=torch.tensor([i, 3 + i]))
        samples.append(sample)
    data = model.data_preprocessor(dict(inputs=inputs, data_samples=samples), training)
    return data['inputs'], data['data_samples']


class MmdetDino:
    """mmdet 3.3's DINO transformer pipeline on the modules of our query head.

    ``pre_transformer`` (masks, positional encodings), ``forward_encoder``, ``pre_decoder``
    (encoder proposals, top-k, mixed selection, denoising queries) and ``forward_decoder``
    are mmdet's own methods; only the modules are ours.
    """
    pre_transformer = DeformableDETR.pre_transformer
    forward_encoder = DeformableDETR.forward_encoder
    gen_encoder_output_proposals = DeformableDETR.gen_encoder_output_proposals
    get_valid_ratio = staticmethod(DeformableDETR.get_valid_ratio)
    pre_decoder = DINO.pre_decoder
    forward_decoder = DINO.forward_decoder

    def __init__(self, head, training):
        trans = head.transformer
        self.positional_encoding, self.level_embed = trans.positional_encoding, trans.level_embed
        self.encoder, self.decoder = trans.encoder, trans.decoder
        self.memory_trans_fc, self.memory_trans_norm = (trans.memory_trans_fc,
                                                        trans.memory_trans_norm)
        self.query_embedding, self.num_queries = trans.query_embedding, trans.num_queries
        self.bbox_head, self.dn_query_generator = head, head.dn_generator
        self.training = training

    def __call__(self, feats, samples):
        """The head's inputs (hidden states, references, encoder outputs, dn_meta) and the
        encoder's outputs (memory, spatial shapes)."""
        encoder_inputs, decoder_inputs = self.pre_transformer(feats, samples)
        encoder_outputs = self.forward_encoder(**encoder_inputs)
        decoder_more, head_inputs = self.pre_decoder(**encoder_outputs,
                                                     batch_data_samples=samples)
        decoder_inputs.update(decoder_more)
        head_inputs.update(self.forward_decoder(**decoder_inputs))
        return head_inputs, encoder_outputs


def release_layer_outputs(head, hidden_states, references):
    """The release's per-layer outputs: sigmoid(reg + inverse_sigmoid(ref, eps=1e-3))."""
    scores = [head.cls_branches[i](h) for i, h in enumerate(hidden_states)]
    boxes = [(head.reg_branches[i](h) + inverse_sigmoid(references[i], eps=1e-3)).sigmoid()
             for i, h in enumerate(hidden_states)]
    return torch.stack(scores), torch.stack(boxes)


def maps_by_hand(head, memory, spatial_shapes):
    """Encoder memory (bs, N, C) -> contiguous (bs, C, h, w) maps, plus the 6th level."""
    maps, start = [], 0
    for h, w in spatial_shapes.tolist():
        chunk = memory[:, start:start + h * w]
        maps.append(chunk.permute(0, 2, 1).contiguous().view(memory.shape[0], -1, h, w))
        start += h * w
    return maps + [head.downsample(maps[-1])]


def assert_same_losses(actual, expected, keys):
    for key in keys:
        a, e = actual[key], expected[key]
        a = a if isinstance(a, (list, tuple)) else [a]
        e = e if isinstance(e, (list, tuple)) else [e]
        assert len(a) == len(e), key
        for x, y in zip(a, e):
            torch.testing.assert_close(x, y, **EXACT, msg=lambda m: f'{key}: {m}')


def assert_same_instances(actual, expected):
    assert len(actual) == len(expected) > 0
    torch.testing.assert_close(actual.bboxes, expected.bboxes, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(actual.scores, expected.scores, **EXACT)
    assert torch.equal(actual.labels, expected.labels)


# ------------------------------------------------------------------- (a) RoI features
def test_encoder_maps_are_contiguous(model):
    inputs, samples = make_batch(model, training=False)
    with torch.no_grad():
        feats = model.extract_feat(inputs)
        maps = model.query_head.forward_transformer(
            feats, [s.metainfo for s in samples])['enc_feats']
    assert len(maps) == 6
    for lvl, feat in enumerate(maps):
        assert feat.is_contiguous(), f'encoder map {lvl} is a strided view'


def test_roi_features_and_gradients_equal_roi_align_on_contiguous_maps(model):
    """The RoI head pools from the encoder maps what mmcv's RoIAlign pools from contiguous
    copies of them (every level: RoIs of 20..1000 px), and sends the gradients back to the
    same memory positions."""
    head = model.query_head
    roi_head = model.roi_head[0]
    inputs, samples = make_batch(model, training=False)
    with torch.no_grad():
        feats = model.extract_feat(inputs)
        _, encoder_outputs = MmdetDino(head, training=False)(feats, samples)
    shapes = encoder_outputs['spatial_shapes']
    rois = torch.tensor([[0, 3., 5., 23., 25.], [1, 10., 2., 40., 60.],
                         [0, 0., 0., 150., 150.], [1, 20., 10., 300., 320.],
                         [0, 5., 5., 600., 640.], [1, 0., 0., 1000., 900.]])
    extractor = roi_head.bbox_roi_extractor
    finest, strides = extractor.finest_scale, extractor.featmap_strides
    scale = ((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])).sqrt()
    levels = torch.floor(torch.log2(scale / finest + 1e-6)).clamp(0, len(strides) - 1).long()
    assert levels.unique().numel() == len(strides)  # every level pooled at least once
    weights = torch.randn(len(rois), extractor.out_channels, 7, 7,
                          generator=torch.Generator().manual_seed(3))

    def pooled_and_grad(to_maps):
        memory = encoder_outputs['memory'].detach().clone().requires_grad_(True)
        pooled = to_maps(memory)
        (pooled * weights).sum().backward()
        return pooled.detach(), memory.grad

    def model_path(memory):
        maps = head.transformer.memory_to_maps(memory, shapes)
        return roi_head._bbox_forward(maps, rois)['bbox_feats']

    def reference(memory):
        maps = [m.contiguous() for m in maps_by_hand(head, memory, shapes)]
        out = memory.new_zeros(len(rois), memory.shape[-1], 7, 7)
        for lvl, stride in enumerate(strides):
            sel = levels == lvl
            out[sel] = roi_align(maps[lvl], rois[sel], (7, 7), 1.0 / stride, 0, 'avg', True)
        return out

    pooled, grad = pooled_and_grad(model_path)
    pooled_ref, grad_ref = pooled_and_grad(reference)
    assert pooled_ref.abs().sum() > 0 and grad_ref.abs().sum() > 0
    torch.testing.assert_close(pooled, pooled_ref, **EXACT)
    torch.testing.assert_close(grad, grad_ref, **EXACT)


# ------------------------------------------------------- (b), (c) training losses
@pytest.fixture(scope='module')
def training_losses(model):
    """``CoDETR.loss`` with seed 7, in eval mode (no dropout anywhere)."""
    inputs, samples = make_batch(model, training=True)
    torch.manual_seed(7)
    losses = model.loss(inputs, copy.deepcopy(samples))
    return losses, inputs, samples


def test_query_head_losses_equal_mmdet_dino_loss(model, training_losses):
    """Matching, denoising and encoder losses equal mmdet's DINO pipeline + DINOHead
    loss_by_feat on the same modules with the same (seeded) denoising queries."""
    losses, inputs, samples = training_losses
    head = model.query_head
    samples = copy.deepcopy(samples)
    torch.manual_seed(7)  # the denoising queries are the first random draw of both
    with torch.no_grad():
        feats = model.extract_feat(inputs)
        head_inputs, _ = MmdetDino(head, training=True)(feats, samples)
        all_cls, all_boxes = release_layer_outputs(
            head, head_inputs['hidden_states'], head_inputs['references'])
        expected = DINOHead.loss_by_feat(
            head, all_cls, all_boxes, head_inputs['enc_outputs_class'],
            head_inputs['enc_outputs_coord'], [s.gt_instances for s in samples],
            [s.metainfo for s in samples], head_inputs['dn_meta'])
    assert head_inputs['dn_meta']['num_denoising_queries'] > 0
    keys = [k for k in expected if 'aux' not in k]
    assert {'loss_cls', 'loss_bbox', 'loss_iou', 'd0.loss_cls', 'dn_loss_cls', 'dn_loss_iou',
            'd0.dn_loss_bbox', 'enc_loss_cls', 'enc_loss_iou'} <= set(keys)
    assert_same_losses(losses, expected, keys)


def test_auxiliary_head_losses_equal_mmdet_heads_on_the_encoder_maps(model, training_losses):
    """RPN, RoI (loss_cls0, acc0, loss_bbox0) and ATSS losses of CoDETR.loss equal mmdet's
    RPNHead.loss_and_predict, StandardRoIHead.loss and ATSSHead.loss_by_feat called by hand
    on contiguous encoder maps, with the same proposals and (seeded) samplings."""
    losses, inputs, samples = training_losses
    head = model.query_head
    samples = copy.deepcopy(samples)
    torch.manual_seed(7)  # same random draws, in the same order, as CoDETR.loss
    with torch.no_grad():
        feats = model.extract_feat(inputs)
        _, encoder_outputs = MmdetDino(head, training=True)(feats, samples)  # dn draws
        maps = maps_by_hand(head, encoder_outputs['memory'], encoder_outputs['spatial_shapes'])
        rpn_samples = copy.deepcopy(samples)
        for sample in rpn_samples:
            sample.gt_instances.labels = torch.zeros_like(sample.gt_instances.labels)
        proposal_cfg = model.train_cfg[1]['rpn_proposal']
        rpn_losses, proposals = RPNHead.loss_and_predict(
            model.rpn_head, maps, rpn_samples, proposal_cfg=proposal_cfg)
        roi_losses = StandardRoIHead.loss(model.roi_head[0], maps, proposals, samples)
        atss = model.bbox_head[0]
        atss_losses = ATSSHead.loss_by_feat(
            atss, *atss(maps), [s.gt_instances for s in samples],
            [s.metainfo for s in samples])
    expected = dict(rpn_losses)
    expected.update({f'{k}0': v for k, v in roi_losses.items()})
    expected.update({f'{k}1': v for k, v in atss_losses.items()})
    keys = ['loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls0', 'acc0', 'loss_bbox0', 'loss_cls1',
            'loss_bbox1', 'loss_centerness1']
    assert set(keys) == set(expected)
    assert expected['loss_bbox0'] > 0 and expected['acc0'] < 100
    assert_same_losses(losses, expected, keys)


# --------------------------------------------------------------------- (d) predictions
@pytest.fixture(scope='module')
def scaled_batch(model):
    """Test images resized from their originals by (w, h) = (0.5, 0.75), and mmdet's
    reference forward of the query head on them."""
    inputs, samples = make_batch(model, training=False, scale=SCALE)
    with torch.no_grad():
        feats = model.extract_feat(inputs)
        head_inputs, encoder_outputs = MmdetDino(model.query_head, training=False)(
            feats, samples)
        maps = maps_by_hand(model.query_head, encoder_outputs['memory'],
                            encoder_outputs['spatial_shapes'])
    return inputs, samples, head_inputs, maps


def predictions(model, eval_module, inputs, samples):
    model.eval_module = eval_module
    try:
        with torch.no_grad():
            return model.predict(inputs, copy.deepcopy(samples), rescale=True)
    finally:
        model.eval_module = 'detr'


def test_detr_predictions_equal_topk_and_soft_nms_by_hand(model, scaled_batch):
    inputs, samples, head_inputs, _ = scaled_batch
    head = model.query_head
    results = predictions(model, 'detr', inputs, samples)
    with torch.no_grad():
        all_cls, all_boxes = release_layer_outputs(
            head, head_inputs['hidden_states'], head_inputs['references'])
    max_per_img = model.test_cfg[0]['max_per_img']
    num_classes = head.num_classes
    for i, sample in enumerate(samples):
        scores, index = all_cls[-1, i].sigmoid().flatten().topk(max_per_img)
        labels, query = index % num_classes, index // num_classes
        boxes = bbox_cxcywh_to_xyxy(all_boxes[-1, i, query])
        h, w = sample.img_shape
        boxes = boxes * boxes.new_tensor([w, h, w, h])
        boxes = torch.minimum(boxes.clamp(min=0), boxes.new_tensor([w, h, w, h]))
        boxes = boxes / boxes.new_tensor(SCALE * 2)
        dets, keep = batched_nms(boxes, scores, labels,
                                 dict(type='soft_nms', iou_threshold=0.8))
        expected = InstanceData(bboxes=boxes[keep], scores=dets[:, -1], labels=labels[keep])
        pred = results[i].pred_instances
        assert_same_instances(pred, expected[:max_per_img])
        assert pred.bboxes[:, 0::2].max() > IMG  # rescaled to the 128 px wide original


def test_one_stage_predictions_equal_atss_predict(model, scaled_batch):
    inputs, samples, _, maps = scaled_batch
    atss = model.bbox_head[0]
    max_per_img = atss.test_cfg.max_per_img
    atss.test_cfg.max_per_img = 10000  # keep every box: each level shows in the results
    try:
        results = predictions(model, 'one-stage', inputs, samples)
        with torch.no_grad():
            expected = ATSSHead.predict(atss, maps, copy.deepcopy(samples), rescale=True)
    finally:
        atss.test_cfg.max_per_img = max_per_img
    for result, exp in zip(results, expected):
        assert_same_instances(result.pred_instances, exp)


def test_two_stage_predictions_equal_rpn_and_roi_predict(model, scaled_batch):
    inputs, samples, _, maps = scaled_batch
    results = predictions(model, 'two-stage', inputs, samples)
    with torch.no_grad():
        proposals = RPNHead.predict(model.rpn_head, maps, copy.deepcopy(samples),
                                    rescale=False)
        expected = StandardRoIHead.predict(model.roi_head[0], maps, proposals,
                                           copy.deepcopy(samples), rescale=True)
    for result, exp in zip(results, expected):
        assert_same_instances(result.pred_instances, exp)


# ------------------------------------------------- (e) positive queries at the border
def test_border_positive_box_uses_the_release_inverse_sigmoid(model):
    """A positive box spanning the whole image width (w = 1 exactly) stays unclamped: the
    decoder's reference is the box itself, the query is the projection of its sine
    embedding of inverse_sigmoid(box, eps=1e-5) (mmdet's default, as the release), and the
    layer-0 box is sigmoid(reg + inverse_sigmoid(box, eps=1e-3))."""
    head = model.query_head
    inputs, samples = make_batch(model, training=True)
    metas = [s.metainfo for s in samples]
    with torch.no_grad():
        enc_feats = head.forward_transformer(model.extract_feat(inputs), metas)['enc_feats']
    bg = head.num_classes
    coords = torch.tensor([[0., 16., 64., 48.], [8., 8., 24., 24.]]).repeat(2, 1, 1)
    labels = torch.tensor([[2, bg], [bg, 5]])
    pos_coords = dict(coords=coords, labels=labels, targets=coords.clone(), feats=None)
    torch.manual_seed(0)
    aux = head.get_aux_targets(pos_coords, metas)
    border = aux['coords'][0, 0]
    torch.testing.assert_close(border, torch.tensor([0.5, 0.5, 1.0, 0.5]), rtol=0, atol=0)

    seen = {}

    def capture(module, args, kwargs):
        seen.update(query=kwargs['query'], reference_points=kwargs['reference_points'])

    handle = head.transformer.decoder.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with torch.no_grad():
            hidden, refs = head.transformer.forward_aux(
                enc_feats[:-1], metas, aux['coords'], 0, head.reg_branches)
            _, boxes = head(hidden, refs)
    finally:
        handle.remove()
    assert torch.equal(seen['reference_points'], aux['coords'])
    trans = head.transformer
    num_feats = trans.embed_dims // 2
    dim_t = 10000 ** (2 * (torch.arange(num_feats) // 2) / num_feats)
    angles = inverse_sigmoid(aux['coords'], eps=1e-5).sigmoid()[..., None] * 2 * math.pi
    angles = angles / dim_t
    sine = torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), -1).flatten(2)
    with torch.no_grad():
        query = trans.aux_pos_trans_norm[0](trans.aux_pos_trans[0](sine))
        expected = (head.reg_branches[0](hidden[0])
                    + inverse_sigmoid(aux['coords'], eps=1e-3)).sigmoid()
    torch.testing.assert_close(seen['query'], query, **EXACT)
    torch.testing.assert_close(boxes[0], expected, **EXACT)
    # the w = 1 coordinate enters as log(1 / 1e-3), not as a clamped 1 - 1e-4
    logit = torch.log((boxes[0, 0, 0, 2] / (1 - boxes[0, 0, 0, 2])).double())
    reg = head.reg_branches[0](hidden[0])[0, 0, 2].double()
    torch.testing.assert_close(logit - reg, torch.tensor(math.log(1e3), dtype=torch.float64),
                               rtol=0, atol=1e-3)
