"""ATSS auxiliary head of Co-DETR: mmdet's ``ATSSHead`` that also returns its positives.

``loss_by_feat`` returns ATSS's usual losses plus ``pos_coords``: for every image all
anchors (xyxy, image pixels), their assigned labels (background = ``num_classes``) and
their box targets (xyxy), which the query head turns into positive queries.
"""
import torch
from mmdet.models.dense_heads import ATSSHead
from mmdet.models.utils import multi_apply
from mmdet.utils import reduce_mean

from soma.registry import DET_MODELS


@DET_MODELS.register_module()
class CoATSSHead(ATSSHead):
    """ATSS head whose loss also returns ``pos_coords`` (tag ``'atss'``)."""

    def loss_by_feat(self, cls_scores, bbox_preds, centernesses, batch_gt_instances,
                     batch_img_metas, batch_gt_instances_ignore=None):
        featmap_sizes = [featmap.size()[-2:] for featmap in bbox_preds]
        device = cls_scores[0].device
        anchor_list, valid_flag_list = self.get_anchors(
            featmap_sizes, batch_img_metas, device=device)
        (anchor_list, labels_list, label_weights_list, bbox_targets_list, _,
         avg_factor) = self.get_targets(
             anchor_list, valid_flag_list, batch_gt_instances, batch_img_metas,
             batch_gt_instances_ignore=batch_gt_instances_ignore)
        avg_factor = reduce_mean(
            torch.tensor(avg_factor, dtype=torch.float, device=device)).item()
        losses_cls, losses_bbox, loss_centerness, bbox_avg_factor = multi_apply(
            self.loss_by_feat_single, anchor_list, cls_scores, bbox_preds, centernesses,
            labels_list, label_weights_list, bbox_targets_list, avg_factor=avg_factor)
        bbox_avg_factor = reduce_mean(sum(bbox_avg_factor)).clamp_(min=1).item()
        losses_bbox = [loss / bbox_avg_factor for loss in losses_bbox]

        # per image: (num_imgs, num_anchors, ...) over all levels
        anchors = torch.cat(anchor_list, dim=1)
        labels = torch.cat(labels_list, dim=1)
        targets = torch.cat(bbox_targets_list, dim=1)
        if not self.reg_decoded_bbox:
            targets = self.bbox_coder.decode(
                anchors.reshape(-1, 4), targets.reshape(-1, 4)).reshape(anchors.shape)
        pos_coords = dict(coords=anchors.detach(), labels=labels, targets=targets.detach(),
                          feats=None, head='atss')
        return dict(loss_cls=losses_cls, loss_bbox=losses_bbox,
                    loss_centerness=loss_centerness, pos_coords=pos_coords)


__all__ = ['CoATSSHead']
