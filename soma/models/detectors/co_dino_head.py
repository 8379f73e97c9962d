"""Co-DINO query head: mmdet's ``DINOHead`` losses around the Co-DINO transformer.

* ``loss(x, samples) -> (losses, enc_feats)``: denoising + matching + encoder losses of
  DINO; ``enc_feats`` are the encoder memory reshaped to the input levels plus a 6th level
  (3x3 stride-2 conv + GroupNorm on the last one): the auxiliary heads run on these maps.
* ``loss_aux(enc_feats, pos_coords, head_idx, samples)``: the positives of auxiliary head
  ``head_idx`` become decoder queries (at most ``max_pos_coords``, at least 9 per image,
  padded with random negatives); each decoder layer gets the main losses, keys
  ``loss_{cls,bbox,iou}_aux`` and ``d<i>.loss_{cls,bbox,iou}_aux``.
* ``forward``: per decoder layer, box = sigmoid(reg + inverse_sigmoid(reference,
  eps=1e-3)), as the release (mmdet's DINOHead: eps 1e-5); the positive boxes stay
  unclamped;
* ``predict``: top ``max_per_img`` (query, class) pairs by sigmoid score, then the
  ``test_cfg.nms`` (class-wise soft-NMS IoU 0.8 in the release's config).
"""
import torch
from mmcv.ops import batched_nms
from mmdet.models.dense_heads import DINOHead
from mmdet.models.layers import CdnQueryGenerator
from mmdet.models.layers.transformer import inverse_sigmoid
from mmdet.models.losses import QualityFocalLoss
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy, bbox_overlaps, bbox_xyxy_to_cxcywh
from mmdet.utils import reduce_mean
from mmengine.structures import InstanceData
from torch import nn

from soma.registry import DET_MODELS
from . import co_dino_transformer  # noqa: F401  (registers SoMACoDinoTransformer)

MIN_POS_COORDS = 9  # Co-DETR: at least this many positive queries per image


@DET_MODELS.register_module()
class CoDINOHead(DINOHead):
    """Co-DINO query head (see module docstring).

    Args:
        transformer (dict): config of :class:`CoDinoTransformer` (``encoder``, ``decoder``,
            ``positional_encoding``, ``num_feature_levels``, ``num_co_heads``,
            ``with_coord_feat``); ``num_queries`` is set from ``num_query``.
        num_query (int): number of matching queries (900 in the release).
        dn_cfg (dict): ``label_noise_scale``, ``box_noise_scale``, ``group_cfg`` of
            mmdet's ``CdnQueryGenerator``.
        max_pos_coords (int): most positive queries per auxiliary head and image.
        use_zero_padding (bool): pad the positive queries with dummy boxes that get no loss
            instead of random negatives of the auxiliary head. As in the release's Co-DINO
            transformer, no self-attention mask separates them from the positives.
        in_channels: accepted (and unused) for the release's configs.
    """

    def __init__(self, *args, transformer, num_query=900, dn_cfg=None, max_pos_coords=300,
                 use_zero_padding=False, in_channels=None, **kwargs):
        transformer = dict(transformer)
        transformer.setdefault('type', 'SoMACoDinoTransformer')
        transformer['num_queries'] = num_query
        num_layers = transformer['decoder']['num_layers']
        embed_dims = transformer['encoder']['layer_cfg']['self_attn_cfg'].get('embed_dims', 256)
        kwargs.update(share_pred_layer=False, num_pred_layer=num_layers + 1, as_two_stage=True)
        kwargs.setdefault('embed_dims', embed_dims)
        super().__init__(*args, **kwargs)
        self.num_query = num_query
        self.max_pos_coords = max_pos_coords
        self.use_zero_padding = use_zero_padding
        self.transformer = DET_MODELS.build(transformer)
        if self.transformer.embed_dims != self.embed_dims:
            raise ValueError(f'CoDINOHead embed_dims={self.embed_dims} differs from the '
                             f'transformer embed_dims={self.transformer.embed_dims}')
        self.downsample = nn.Sequential(
            nn.Conv2d(self.embed_dims, self.embed_dims, kernel_size=3, stride=2, padding=1),
            nn.GroupNorm(32, self.embed_dims))
        dn_cfg = dict(dn_cfg or {})
        self.dn_generator = CdnQueryGenerator(
            num_classes=self.num_classes, embed_dims=self.embed_dims,
            num_matching_queries=num_query, **dn_cfg)

    def init_weights(self):
        """Prediction branches (DINOHead), then the transformer explicitly."""
        super().init_weights()
        self.transformer.init_weights()

    # ------------------------------------------------------------------- forward
    def forward(self, hidden_states, references):
        """Class scores and boxes of every decoder layer (main and positive queries).

        As the release: box = sigmoid(reg_branch(hidden) + inverse_sigmoid(reference,
        eps=1e-3)); mmdet's DINOHead uses eps 1e-5 here.
        """
        all_cls, all_coords = [], []
        for layer, hidden in enumerate(hidden_states):
            reference = inverse_sigmoid(references[layer], eps=1e-3)
            all_cls.append(self.cls_branches[layer](hidden))
            all_coords.append((self.reg_branches[layer](hidden) + reference).sigmoid())
        return torch.stack(all_cls), torch.stack(all_coords)

    def forward_transformer(self, mlvl_feats, batch_img_metas, dn_queries=None):
        """Run the transformer; return its outputs and the 6 encoder maps."""
        dn_label_query, dn_bbox_query, dn_mask = dn_queries or (None, None, None)
        hidden_states, references, topk_score, topk_coords, memory, levels = self.transformer(
            mlvl_feats, batch_img_metas, self.cls_branches, self.reg_branches,
            dn_label_query, dn_bbox_query, dn_mask)
        if dn_label_query is not None and dn_label_query.size(1) == 0:
            # keep the label embedding in the graph when no image has a target
            hidden_states[0] = hidden_states[0] + \
                self.dn_generator.label_embedding.weight[0, 0] * 0.0
        enc_feats = self.transformer.memory_to_maps(memory, levels['spatial_shapes'])
        enc_feats.append(self.downsample(enc_feats[-1]))
        return dict(hidden_states=hidden_states, references=references,
                    enc_outputs_class=topk_score, enc_outputs_coord=topk_coords,
                    enc_feats=tuple(enc_feats))

    def loss(self, x, batch_data_samples):
        """DINO losses; return ``(losses, enc_feats)`` for the auxiliary heads."""
        batch_img_metas = [s.metainfo for s in batch_data_samples]
        batch_gt_instances = [s.gt_instances for s in batch_data_samples]
        dn_label_query, dn_bbox_query, dn_mask, dn_meta = self.dn_generator(batch_data_samples)
        outs = self.forward_transformer(
            x, batch_img_metas, (dn_label_query, dn_bbox_query, dn_mask))
        all_cls, all_coords = self(outs['hidden_states'], outs['references'])
        losses = self.loss_by_feat(all_cls, all_coords, outs['enc_outputs_class'],
                                   outs['enc_outputs_coord'], batch_gt_instances,
                                   batch_img_metas, dn_meta)
        return losses, outs['enc_feats']

    # ------------------------------------------------------------- positive queries
    def get_aux_targets(self, pos_coords, batch_img_metas):
        """Select/pad the positives of one auxiliary head; normalised cxcywh boxes."""
        coords, labels, targets = pos_coords['coords'], pos_coords['labels'], pos_coords['targets']
        feats = pos_coords.get('feats')
        num_pos = [int(((lab >= 0) & (lab < self.num_classes)).sum()) for lab in labels]
        k = max(MIN_POS_COORDS, min(self.max_pos_coords, max(num_pos)))
        out = dict(coords=[], labels=[], targets=[], label_weights=[], bbox_weights=[], feats=[])
        for i, meta in enumerate(batch_img_metas):
            img_h, img_w = meta['img_shape'][:2]
            factor = coords[i].new_tensor([img_w, img_h, img_w, img_h])[None]
            lab = labels[i]
            device = lab.device
            pos = ((lab >= 0) & (lab < self.num_classes)).nonzero().squeeze(1)
            if len(pos) > k:
                pos = pos[torch.randperm(len(pos), device=device)[:k]]
            chosen, n_pad = pos, k - len(pos)
            if n_pad > 0 and not self.use_zero_padding:
                neg = (lab == self.num_classes).nonzero().squeeze(1)
                neg = neg[torch.randperm(len(neg), device=device)[:n_pad]]
                chosen, n_pad = torch.cat([pos, neg]), n_pad - len(neg)
            n_real = len(chosen)
            box = bbox_xyxy_to_cxcywh(coords[i][chosen] / factor)
            tgt = bbox_xyxy_to_cxcywh(targets[i][chosen] / factor)
            label_w = box.new_ones(k)
            bbox_w = box.new_zeros(k, 4)
            bbox_w[:len(pos)] = 1
            feat = feats[i][chosen] if feats is not None else None
            if n_pad > 0:  # zero padding (or too few negatives): dummy queries, no loss
                box = torch.cat([box, box.new_tensor([[0.5, 0.5, 1.0, 1.0]]).expand(n_pad, 4)])
                tgt = torch.cat([tgt, tgt.new_zeros(n_pad, 4)])
                label_w[n_real:] = 0
                if feat is not None:
                    feat = torch.cat([feat, feat.new_zeros(n_pad, feat.shape[-1])])
            chosen_lab = torch.cat([lab[chosen], lab.new_full((n_pad, ), self.num_classes)])
            out['coords'].append(box)  # unclamped, as the release (see forward_aux)
            out['labels'].append(chosen_lab)
            out['targets'].append(tgt)
            out['label_weights'].append(label_w)
            out['bbox_weights'].append(bbox_w)
            out['feats'].append(feat)
        stacked = {key: torch.stack(val) for key, val in out.items() if key != 'feats'}
        stacked['feats'] = torch.stack(out['feats']) if feats is not None else None
        return stacked

    def loss_aux(self, enc_feats, pos_coords, head_idx, batch_data_samples):
        """Losses of the positive queries of auxiliary head ``head_idx``."""
        batch_img_metas = [s.metainfo for s in batch_data_samples]
        if self.transformer.with_coord_feat and pos_coords.get('feats') is None:
            pos_coords = dict(pos_coords, feats=self._anchor_feats(enc_feats, pos_coords))
        aux = self.get_aux_targets(pos_coords, batch_img_metas)
        hidden_states, references = self.transformer.forward_aux(
            enc_feats[:-1], batch_img_metas, aux['coords'], head_idx, self.reg_branches,
            pos_feats=aux['feats'])
        all_cls, all_coords = self(hidden_states, references)
        losses = {}
        num_layers = len(all_cls)
        for layer, (cls_scores, bbox_preds) in enumerate(zip(all_cls, all_coords)):
            loss_cls, loss_bbox, loss_iou = self._loss_aux_single(
                cls_scores, bbox_preds, aux, batch_img_metas)
            prefix = '' if layer == num_layers - 1 else f'd{layer}.'
            losses[f'{prefix}loss_cls_aux'] = loss_cls
            losses[f'{prefix}loss_bbox_aux'] = loss_bbox
            losses[f'{prefix}loss_iou_aux'] = loss_iou
        return losses

    @staticmethod
    def _anchor_feats(enc_feats, pos_coords):
        """Per-anchor features of a dense head: its location's feature on every level."""
        feats = torch.cat([f.flatten(2) for f in enc_feats], dim=2).transpose(1, 2)
        per_location = pos_coords['coords'].shape[1] // feats.shape[1]
        return feats.repeat_interleave(per_location, dim=1)

    def _loss_aux_single(self, cls_scores, bbox_preds, aux, batch_img_metas):
        labels = aux['labels'].reshape(-1)
        label_weights = aux['label_weights'].reshape(-1)
        bbox_targets = aux['targets'].reshape(-1, 4)
        bbox_weights = aux['bbox_weights'].reshape(-1, 4)
        bbox_preds_flat = bbox_preds.reshape(-1, 4)
        cls_scores = cls_scores.reshape(-1, self.cls_out_channels)

        pos_inds = ((labels >= 0) & (labels < self.num_classes)).nonzero().squeeze(1)
        num_pos = len(pos_inds)
        cls_avg_factor = num_pos + (len(labels) - num_pos) * self.bg_cls_weight
        if self.sync_cls_avg_factor:
            cls_avg_factor = reduce_mean(cls_scores.new_tensor([cls_avg_factor]))
        cls_avg_factor = max(float(cls_avg_factor), 1.0)
        if isinstance(self.loss_cls, QualityFocalLoss):
            scores = label_weights.new_zeros(labels.shape)
            scores[pos_inds] = bbox_overlaps(
                bbox_cxcywh_to_xyxy(bbox_preds_flat[pos_inds]).detach(),
                bbox_cxcywh_to_xyxy(bbox_targets[pos_inds]), is_aligned=True)
            loss_cls = self.loss_cls(cls_scores, (labels, scores), weight=label_weights,
                                     avg_factor=cls_avg_factor)
        else:
            loss_cls = self.loss_cls(cls_scores, labels, label_weights, avg_factor=cls_avg_factor)

        num_total_pos = torch.clamp(reduce_mean(loss_cls.new_tensor([num_pos])), min=1).item()
        num_queries = bbox_preds.shape[1]
        factors = torch.cat([
            bbox_preds.new_tensor([m['img_shape'][1], m['img_shape'][0]] * 2)[None].expand(
                num_queries, 4) for m in batch_img_metas])
        loss_iou = self.loss_iou(bbox_cxcywh_to_xyxy(bbox_preds_flat) * factors,
                                 bbox_cxcywh_to_xyxy(bbox_targets) * factors, bbox_weights,
                                 avg_factor=num_total_pos)
        loss_bbox = self.loss_bbox(bbox_preds_flat, bbox_targets, bbox_weights,
                                   avg_factor=num_total_pos)
        return loss_cls, loss_bbox, loss_iou

    # ------------------------------------------------------------------- predict
    def predict(self, x, batch_data_samples, rescale=True):
        batch_img_metas = [s.metainfo for s in batch_data_samples]
        outs = self.forward_transformer(x, batch_img_metas)
        all_cls, all_coords = self(outs['hidden_states'], outs['references'])
        return self.predict_by_feat(all_cls, all_coords, batch_img_metas, rescale=rescale)

    def _predict_by_feat_single(self, cls_score, bbox_pred, img_meta, rescale=True):
        max_per_img = self.test_cfg.get('max_per_img', self.num_query)
        score_thr = self.test_cfg.get('score_thr', 0)
        nms_cfg = self.test_cfg.get('nms', None)
        scores, indexes = cls_score.sigmoid().view(-1).topk(
            min(max_per_img, cls_score.numel()))
        labels = indexes % self.num_classes
        bbox_pred = bbox_pred[indexes // self.num_classes]
        if score_thr > 0:
            keep = scores > score_thr
            scores, labels, bbox_pred = scores[keep], labels[keep], bbox_pred[keep]
        img_h, img_w = img_meta['img_shape'][:2]
        bboxes = bbox_cxcywh_to_xyxy(bbox_pred)
        bboxes[:, 0::2] = (bboxes[:, 0::2] * img_w).clamp(min=0, max=img_w)
        bboxes[:, 1::2] = (bboxes[:, 1::2] * img_h).clamp(min=0, max=img_h)
        if rescale:
            bboxes /= bboxes.new_tensor(img_meta['scale_factor']).repeat((1, 2))
        results = InstanceData(bboxes=bboxes, scores=scores, labels=labels)
        if nms_cfg is not None and len(results) > 0:
            dets, keep = batched_nms(results.bboxes, results.scores, results.labels, nms_cfg)
            results = results[keep]
            results.scores = dets[:, -1]
            results = results[:max_per_img]
        return results


__all__ = ['CoDINOHead']
