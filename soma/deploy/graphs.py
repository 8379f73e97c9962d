"""The exportable forms of a trained model: adapters merged, the input size fixed.

* :func:`merged_for_export`: an eval-mode copy with the adapters (SoMA or ``peft``) folded
  into plain layers (``merge_and_unload_backbone``); refuses a model that still holds an
  adapter tensor (a name with ``lora``).
* :func:`freeze_position_embedding`: the backbone's run-time position-embedding resize
  computed once, by the backbone's own code, for the export size. Traced, the resize is
  either not exportable (DINOv2 with registers resizes with antialias) or specialised to
  the traced batch (SigLIP2 loops over the images); as a constant it is exact and free.
* :class:`SegmentorGraph`: ``image`` (N x 3 x H x W, RGB 0..255) -> ``logits`` (N x C x H x W):
  the data preprocessor's normalisation, then the segmentor's ``encode_decode`` at the
  input size (mmseg's whole-image logits; one window of its sliding-window inference).
* :class:`DetrGraph`: ``image`` -> ``boxes`` (N x K x 4, x1 y1 x2 y2 in input pixels),
  ``scores``, ``labels`` (N x K): Co-DETR's query head (the ``detr`` branch) and its top-K
  (query, class) selection, without the NMS of the config.
"""
import copy
import functools
import math

import torch
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy
from torch import nn

from soma.models.backbones.dinov2 import DinoVisionTransformer
from soma.models.backbones.hf_vision import HFVisionBackbone
from soma.models.peft_backbone import merge_and_unload_backbone

__all__ = ['ExportError', 'ADAPTER_MARK', 'merged_for_export', 'adapter_names',
           'freeze_position_embedding', 'SegmentorGraph', 'DetrGraph']

ADAPTER_MARK = 'lora'  # SoMA's and peft's adapter tensors: lora_A, lora_B, lora_magnitude...


class ExportError(ValueError):
    """A model that cannot be exported; the message is one line naming the module."""


def adapter_names(module: nn.Module) -> list:
    """Names of the parameters, buffers and modules of ``module`` that belong to an adapter."""
    names = [n for n, _ in module.named_modules() if ADAPTER_MARK in n]
    return names + [n for n in module.state_dict() if ADAPTER_MARK in n]


def merged_for_export(model: nn.Module) -> nn.Module:
    """An eval-mode CPU copy of ``model`` whose backbone has its adapters merged."""
    model = copy.deepcopy(model).cpu().eval()
    model.backbone = merge_and_unload_backbone(model.backbone)
    left = adapter_names(model)
    if left:
        raise ExportError(f'{left[0]}: an adapter is left after merging the backbone '
                          f'({type(model.backbone).__name__}); it cannot be exported merged')
    return model.eval()


def _constant(value, *args, **kwargs):
    return value


def _grid(size, patch, pad_to_patch):
    return math.ceil(size / patch) if pad_to_patch else size // patch


def freeze_position_embedding(backbone: nn.Module, input_hw) -> nn.Module:
    """Fix ``backbone``'s position embedding to the ``input_hw`` (pixels) of the export.

    DINOv2 (ours): ``pos_embed`` becomes the embedding resized for the grid (bicubic, as at
    run time), stored at that grid. transformers DINOv2 (with or without registers) and
    SigLIP2: their resize method returns the embedding computed for the grid. DINOv3
    computes its RoPE from the input shape and needs nothing. Returns ``backbone``.
    """
    h_img, w_img = input_hw
    if isinstance(backbone, DinoVisionTransformer):
        p, pad = backbone.patch_size, backbone.patch_embed.pad_to_patch
        grid = (_grid(h_img, p, pad), _grid(w_img, p, pad))
        with torch.no_grad():
            pos = backbone.interpolate_pos_encoding(backbone.pos_embed, *grid)
        backbone.pos_embed = nn.Parameter(pos.detach().clone(), requires_grad=False)
        backbone.patch_grid = grid
        return backbone
    if not isinstance(backbone, HFVisionBackbone):
        return backbone
    p, pad = backbone.patch_size, backbone.pad_to_patch
    grid = (_grid(h_img, p, pad), _grid(w_img, p, pad))
    embeddings = backbone.hf_model.embeddings
    with torch.no_grad():
        if backbone.model_type in ('dinov2', 'dinov2_with_registers'):
            tokens = embeddings.position_embeddings.new_zeros(
                1, 1 + grid[0] * grid[1], backbone.embed_dim)
            pos = embeddings.interpolate_pos_encoding(tokens, grid[0] * p, grid[1] * p)
            embeddings.interpolate_pos_encoding = functools.partial(_constant, pos.detach())
        elif backbone.family.patchified_input:  # SigLIP2
            size = embeddings.position_embedding_size
            table = embeddings.position_embedding.weight.reshape(size, size, -1)
            pos = embeddings.resize_positional_embeddings(
                table, torch.tensor([list(grid)]), max_length=grid[0] * grid[1])
            embeddings.resize_positional_embeddings = functools.partial(_constant, pos.detach())
    return backbone


def _normaliser(model):
    """``(mean, std, to_bgr)`` of the model's data preprocessor (mean None: no normalising).

    ``to_bgr``: the model takes the channels in the loaded (BGR) order (its preprocessor
    config has neither ``bgr_to_rgb`` nor ``rgb_to_bgr``), so the RGB input is flipped.
    The flag is read from ``model.cfg`` (set by ``init_model``): mmengine's preprocessor
    keeps it private.
    """
    cfg = getattr(model, 'cfg', None)
    pre_cfg = cfg.model.get('data_preprocessor') if cfg is not None else None
    if not pre_cfg:
        raise ExportError(f'{type(model).__name__}: no model.cfg.model.data_preprocessor '
                          f'(build the model with soma.apis.inference.init_model)')
    to_bgr = not (pre_cfg.get('bgr_to_rgb') or pre_cfg.get('rgb_to_bgr'))
    mean = getattr(model.data_preprocessor, 'mean', None)
    if mean is None:
        return None, None, to_bgr
    std = model.data_preprocessor.std
    return mean.detach().clone().view(1, -1, 1, 1), std.detach().clone().view(1, -1, 1, 1), \
        to_bgr


class _ImageGraph(nn.Module):
    """Normalises ``image`` (N x 3 x H x W, RGB 0..255) as the model's data preprocessor."""

    def __init__(self, model, input_hw):
        super().__init__()
        self.model = model
        self.input_hw = tuple(int(s) for s in input_hw)
        mean, std, self.to_bgr = _normaliser(model)
        self.normalise = mean is not None
        if self.normalise:
            self.register_buffer('mean', mean)
            self.register_buffer('std', std)

    def normalised(self, image):
        x = image.flip(1) if self.to_bgr else image
        return (x - self.mean) / self.std if self.normalise else x


class SegmentorGraph(_ImageGraph):
    """``image`` -> ``logits``: normalisation + the segmentor's ``encode_decode`` (see the
    module docstring)."""

    def __init__(self, segmentor, input_hw):
        super().__init__(segmentor, input_hw)
        pad = getattr(segmentor.data_preprocessor, 'test_cfg', None) or {}
        if pad.get('size') or pad.get('size_divisor'):
            raise ExportError(f'data_preprocessor.test_cfg={dict(pad)} pads the test images: '
                              f'not supported by the export (the runner does not pad)')

    def forward(self, image):
        meta = dict(img_shape=self.input_hw, ori_shape=self.input_hw)
        return self.model.encode_decode(self.normalised(image), [meta] * image.shape[0])


class DetrGraph(_ImageGraph):
    """``image`` -> ``boxes, scores, labels`` of Co-DETR's ``detr`` branch (module docstring).

    As ``CoDINOHead.predict`` without ``score_thr`` and NMS: the last decoder layer's
    sigmoid scores, the top K = ``max_per_img`` of all (query, class) pairs, label = index
    mod classes, the query's box in pixels clamped to the image.
    """

    def __init__(self, detector, input_hw):
        super().__init__(detector, input_hw)
        head = getattr(detector, 'query_head', None)
        if head is None:
            raise ExportError(f'{type(detector).__name__} has no query_head: only the Co-DETR '
                              f'detr branch can be exported')
        divisor = int(getattr(detector.data_preprocessor, 'pad_size_divisor', 1) or 1)
        if self.input_hw[0] % divisor or self.input_hw[1] % divisor:
            raise ExportError(
                f'--shape {self.input_hw[0]} {self.input_hw[1]}: the detector pads its input '
                f'to multiples of {divisor} (data_preprocessor.pad_size_divisor); export at '
                f'multiples of {divisor}, so that nothing is padded')
        self.num_classes = head.num_classes
        max_per_img = (head.test_cfg or {}).get('max_per_img', head.num_query)
        self.k = min(int(max_per_img), head.num_query * head.num_classes)

    def forward(self, image):
        head = self.model.query_head
        h, w = self.input_hw
        meta = dict(img_shape=self.input_hw, batch_input_shape=self.input_hw,
                    pad_shape=self.input_hw, ori_shape=self.input_hw)
        feats = self.model.extract_feat(self.normalised(image))
        outs = head.forward_transformer(feats, [meta] * image.shape[0])
        all_cls, all_coords = head(outs['hidden_states'], outs['references'])
        scores, index = all_cls[-1].sigmoid().flatten(1).topk(self.k, dim=1)
        labels = index % self.num_classes
        query = torch.div(index, self.num_classes, rounding_mode='floor')
        boxes = bbox_cxcywh_to_xyxy(
            torch.gather(all_coords[-1], 1, query.unsqueeze(-1).expand(-1, -1, 4)))
        size = boxes.new_tensor([w, h, w, h])
        boxes = torch.minimum((boxes * size).clamp(min=0), size)
        return boxes, scores, labels
