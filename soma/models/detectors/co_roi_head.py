"""RoI auxiliary head of Co-DETR: mmdet's ``StandardRoIHead`` that also returns positives.

``loss`` returns the usual Faster R-CNN box losses plus ``pos_coords``: per image the
sampled proposals (xyxy, positives first), their labels (background = ``num_classes``),
their box targets (the assigned ground-truth boxes, xyxy) and the RoI features
mean-pooled over the 7x7 grid; at most ``max_proposal`` (2000) per image, the same
number for every image.
"""
import torch
from mmdet.models.roi_heads import StandardRoIHead
from mmdet.models.utils import unpack_gt_instances
from mmdet.structures.bbox import bbox2roi

from soma.registry import DET_MODELS


@DET_MODELS.register_module()
class CoStandardRoIHead(StandardRoIHead):
    """Standard RoI head whose loss also returns ``pos_coords`` (tag ``'rcnn'``)."""

    max_proposal = 2000

    def loss(self, x, rpn_results_list, batch_data_samples):
        if len(rpn_results_list) != len(batch_data_samples):
            raise ValueError(f'{len(rpn_results_list)} proposal lists for '
                             f'{len(batch_data_samples)} images')
        batch_gt_instances, batch_gt_instances_ignore, _ = unpack_gt_instances(
            batch_data_samples)
        sampling_results = []
        for i, rpn_results in enumerate(rpn_results_list):
            rpn_results = rpn_results.clone()
            rpn_results.priors = rpn_results.pop('bboxes')
            assign_result = self.bbox_assigner.assign(
                rpn_results, batch_gt_instances[i], batch_gt_instances_ignore[i])
            sampling_results.append(self.bbox_sampler.sample(
                assign_result, rpn_results, batch_gt_instances[i],
                feats=[lvl_feat[i][None] for lvl_feat in x]))

        rois = bbox2roi([res.priors for res in sampling_results])
        bbox_results = self._bbox_forward(x, rois)
        losses = self.bbox_head.loss_and_target(
            cls_score=bbox_results['cls_score'], bbox_pred=bbox_results['bbox_pred'],
            rois=rois, sampling_results=sampling_results,
            rcnn_train_cfg=self.train_cfg)['loss_bbox']

        pooled = bbox_results['bbox_feats'].mean(dim=(-2, -1)).split(
            [len(res.priors) for res in sampling_results])
        keep = min([self.max_proposal] + [len(res.priors) for res in sampling_results])
        coords, labels, targets, feats = [], [], [], []
        for res, feat in zip(sampling_results, pooled):
            num_neg = len(res.neg_priors)
            coords.append(res.priors[:keep])
            background = res.pos_gt_labels.new_full((num_neg, ), self.bbox_head.num_classes)
            labels.append(torch.cat([res.pos_gt_labels, background])[:keep])
            targets.append(torch.cat([res.pos_gt_bboxes, res.neg_priors])[:keep])
            feats.append(feat[:keep])
        losses['pos_coords'] = dict(
            coords=torch.stack(coords).detach(), labels=torch.stack(labels),
            targets=torch.stack(targets).detach(), feats=torch.stack(feats), head='rcnn')
        return losses


__all__ = ['CoStandardRoIHead']
