"""Co-DETR detector (collaborative hybrid assignments), on mmdet 3.3's ``BaseDetector``.

Heads: a DETR-like ``query_head`` (Co-DINO), an ``rpn_head`` with a list of ``roi_head``
(Faster R-CNN branch) and a list of one-stage ``bbox_head`` (ATSS). ``train_cfg`` and
``test_cfg`` are lists indexed like the heads: ``[query, rpn+rcnn (one entry with keys
rpn/rpn_proposal/rcnn, shared by the RoI heads in order), bbox heads...]``.

Training: the query head runs first and returns the encoder's maps; the RPN, RoI and ATSS
heads compute their losses on those maps; with ``with_pos_coord`` the positives of every
RoI head and then every ATSS head become extra decoder queries of the query head (one
query projection per auxiliary head, see :class:`CoDinoTransformer`). The loss is the sum
of all heads' losses; their weights (x12 for the auxiliary heads in the release) are in
the configs. Loss keys: the query head's own; ``loss_rpn_*``; RoI losses with suffix
``i``; ATSS losses with suffix ``len(roi_head) + i``; positive-query losses with suffix
``i`` in the order RoI heads then ATSS heads (``loss_cls_aux0``, ``d0.loss_iou_aux1``...).

Testing: ``eval_module='detr'`` (query head), ``'one-stage'`` (ATSS head ``eval_index``
on the encoder maps) or ``'two-stage'`` (RPN + RoI head ``eval_index``). ``use_lsj``
treats every image as filling the padded batch (large-scale-jitter pipelines).
"""
import copy

import torch
from mmdet.models.detectors.base import BaseDetector
from mmengine.model import ModuleList

from soma.registry import DET_MODELS

EVAL_MODULES = ('detr', 'one-stage', 'two-stage')


def _suffixed(losses, idx):
    return {f'{key}{idx}': value for key, value in losses.items()}


def _cfg_at(cfgs, idx):
    if cfgs is None or idx >= len(cfgs):
        return None
    return cfgs[idx]


@DET_MODELS.register_module()
class CoDETR(BaseDetector):
    """Co-DETR (see module docstring)."""

    def __init__(self, backbone, neck=None, query_head=None, rpn_head=None, roi_head=None,
                 bbox_head=None, train_cfg=None, test_cfg=None, with_pos_coord=True,
                 use_lsj=True, eval_module='detr', eval_index=0, data_preprocessor=None,
                 init_cfg=None):
        if isinstance(data_preprocessor, dict):  # mmdet's, whatever the default scope
            data_preprocessor = DET_MODELS.build(data_preprocessor)
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if eval_module not in EVAL_MODULES:
            raise ValueError(f'eval_module must be one of {EVAL_MODULES}, got {eval_module!r}')
        roi_head = [h for h in (roi_head or []) if h]
        bbox_head = [h for h in (bbox_head or []) if h]
        self.with_pos_coord = with_pos_coord
        self.use_lsj = use_lsj
        self.eval_module = eval_module
        self.eval_index = eval_index
        self.train_cfg = train_cfg
        self.test_cfg = test_cfg

        self.backbone = DET_MODELS.build(backbone)
        if neck is not None:
            self.neck = DET_MODELS.build(neck)
        head_idx = 0
        if query_head is not None:
            query_head = copy.deepcopy(dict(query_head))
            transformer = dict(query_head['transformer'])
            num_aux = len(roi_head) + len(bbox_head) if with_pos_coord else 0
            num_co_heads = transformer.setdefault('num_co_heads', num_aux)
            if num_co_heads < num_aux:
                raise ValueError(
                    f'query_head.transformer.num_co_heads={num_co_heads} but {num_aux} '
                    f'auxiliary heads feed positive queries (len(roi_head) + len(bbox_head))')
            query_head['transformer'] = transformer
            query_head.update(train_cfg=_cfg_at(train_cfg, 0), test_cfg=_cfg_at(test_cfg, 0))
            self.query_head = DET_MODELS.build(query_head)
            head_idx = 1
        self.head_idx = head_idx
        if rpn_head is not None:
            rpn_head = copy.deepcopy(dict(rpn_head))
            train = _cfg_at(train_cfg, head_idx)
            rpn_head.update(train_cfg=train.rpn if train is not None else None,
                            test_cfg=_cfg_at(test_cfg, head_idx).rpn)
            self.rpn_head = DET_MODELS.build(rpn_head)
        self.roi_head = ModuleList()
        for i, cfg in enumerate(roi_head):
            cfg = copy.deepcopy(dict(cfg))
            train = _cfg_at(train_cfg, head_idx + i)
            cfg.update(train_cfg=train.rcnn if train is not None else None,
                       test_cfg=_cfg_at(test_cfg, head_idx + i).rcnn)
            self.roi_head.append(DET_MODELS.build(cfg))
        self.bbox_head = ModuleList()
        for i, cfg in enumerate(bbox_head):
            cfg = copy.deepcopy(dict(cfg))
            idx = head_idx + len(self.roi_head) + i
            cfg.update(train_cfg=_cfg_at(train_cfg, idx), test_cfg=_cfg_at(test_cfg, idx))
            self.bbox_head.append(DET_MODELS.build(cfg))

    @property
    def with_query_head(self):
        return getattr(self, 'query_head', None) is not None

    @property
    def with_rpn(self):
        return getattr(self, 'rpn_head', None) is not None

    @property
    def with_roi_head(self):
        return len(self.roi_head) > 0

    @property
    def with_bbox(self):
        return len(self.roi_head) > 0 or len(self.bbox_head) > 0

    @property
    def with_mask(self):
        return False

    def extract_feat(self, batch_inputs):
        x = self.backbone(batch_inputs)
        if self.with_neck:
            x = self.neck(x)
        return x

    def _apply_lsj(self, batch_data_samples):
        if self.use_lsj:
            for sample in batch_data_samples:
                sample.set_metainfo(dict(img_shape=tuple(sample.batch_input_shape)))

    # ------------------------------------------------------------------- training
    def loss(self, batch_inputs, batch_data_samples):
        self._apply_lsj(batch_data_samples)
        x = self.extract_feat(batch_inputs)
        losses = {}
        if self.with_query_head:
            query_losses, x = self.query_head.loss(x, batch_data_samples)
            losses.update(query_losses)

        if self.with_rpn:
            proposal_cfg = self.train_cfg[self.head_idx].get(
                'rpn_proposal', self.test_cfg[self.head_idx].rpn)
            rpn_samples = copy.deepcopy(batch_data_samples)
            for sample in rpn_samples:  # the RPN is class-agnostic
                sample.gt_instances.labels = torch.zeros_like(sample.gt_instances.labels)
            rpn_losses, proposal_list = self.rpn_head.loss_and_predict(
                x, rpn_samples, proposal_cfg=proposal_cfg)
            for key in list(rpn_losses):
                if 'loss' in key and 'rpn' not in key:
                    rpn_losses[f'rpn_{key}'] = rpn_losses.pop(key)
            losses.update(rpn_losses)
        elif self.with_roi_head:
            proposal_list = [sample.proposals for sample in batch_data_samples]

        positive_coords = []
        aux_heads = list(self.roi_head) + list(self.bbox_head)
        for i, head in enumerate(aux_heads):
            if i < len(self.roi_head):
                head_losses = head.loss(x, proposal_list, batch_data_samples)
            else:
                head_losses = head.loss(x, batch_data_samples)
            pos_coords = head_losses.pop('pos_coords', None)
            if self.with_pos_coord and pos_coords is not None:
                positive_coords.append(pos_coords)
            losses.update(_suffixed(head_losses, i))

        if self.with_query_head:
            for i, pos_coords in enumerate(positive_coords):
                aux_losses = self.query_head.loss_aux(x, pos_coords, i, batch_data_samples)
                losses.update(_suffixed(aux_losses, i))
        return losses

    # ------------------------------------------------------------------- testing
    def predict(self, batch_inputs, batch_data_samples, rescale=True):
        self._apply_lsj(batch_data_samples)
        feats = self.extract_feat(batch_inputs)
        if self.eval_module == 'one-stage' and len(self.bbox_head) > 0:
            results = self.bbox_head[self.eval_index].predict(
                self._aux_feats(feats, batch_data_samples), batch_data_samples, rescale=rescale)
        elif self.eval_module == 'two-stage' and self.with_roi_head:
            feats = self._aux_feats(feats, batch_data_samples)
            proposals = self.rpn_head.predict(feats, batch_data_samples, rescale=False)
            results = self.roi_head[self.eval_index].predict(
                feats, proposals, batch_data_samples, rescale=rescale)
        else:
            results = self.query_head.predict(feats, batch_data_samples, rescale=rescale)
        return self.add_pred_to_datasample(batch_data_samples, results)

    def _aux_feats(self, feats, batch_data_samples):
        """The maps the auxiliary heads were trained on: the encoder's, when there is one."""
        if not self.with_query_head:
            return feats
        metas = [s.metainfo for s in batch_data_samples]
        return self.query_head.forward_transformer(feats, metas)['enc_feats']

    def _forward(self, batch_inputs, batch_data_samples=None):
        """Raw outputs of the query head: per decoder layer class scores and boxes."""
        feats = self.extract_feat(batch_inputs)
        metas = [s.metainfo for s in batch_data_samples]
        outs = self.query_head.forward_transformer(feats, metas)
        return self.query_head(outs['hidden_states'], outs['references'])


__all__ = ['CoDETR']
