"""Sliding-window inference with the windows batched (``test_cfg.slide_batch_size``).

mmseg's ``EncoderDecoder.slide_inference`` runs one window position at a time (a Cityscapes
image at crop 512, stride 341: 18 forwards of batch 1). Here the windows of every image of
the batch are cut in mmseg's order, run through ``encode_decode`` ``slide_batch_size`` at a
time, and added back in the same order, so the result equals mmseg's within float rounding
(only the batch size of the network calls differs):

* windows: the same grid (``h_grids``, ``w_grids``), the last row/column shifted back to end
  at the image border, all of the same shape ``min(crop, image)``;
* metainfo: every window's meta is a copy of its image's meta with ``img_shape`` set to the
  window shape as a ``torch.Size`` (mmseg sets it on ``batch_img_metas[0]`` only; the
  decode heads read that one); ``pad_shape`` and the other keys stay as they are. The
  caller's metas are not modified;
* logits are summed per image in window order, then divided by ``count_mat`` (how many
  windows cover each pixel), exactly as mmseg does.

``slide_batch_size`` absent, ``None`` or ``0`` keeps mmseg's sequential implementation.
"""
from typing import List

import torch
from mmseg.models.segmentors import EncoderDecoder

from soma.deploy.runtime import slide_windows  # numpy only: one window geometry, torch and ONNX
from soma.registry import register_model

__all__ = ['slide_windows', 'batched_slide_inference', 'BatchedSlideEncoderDecoder']


def _check_batch_size(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'test_cfg.slide_batch_size must be a positive int (or None/0 for '
                         f"mmseg's sequential windows), got {value!r}")
    return value


def batched_slide_inference(encode_decode, inputs: torch.Tensor, batch_img_metas: List[dict],
                            crop_size, stride, out_channels: int,
                            batch_size: int) -> torch.Tensor:
    """Seg logits ``(N, out_channels, H, W)`` of ``inputs`` ``(N, C, H, W)`` by sliding windows.

    ``encode_decode(crops, metas)``: the segmentor's network call (``EncoderDecoder``'s
    ``encode_decode``), given up to ``batch_size`` windows and one meta per window.
    """
    batch_size = _check_batch_size(batch_size)
    n_img, _, h_img, w_img = inputs.shape
    boxes = slide_windows(h_img, w_img, crop_size, stride)
    preds = inputs.new_zeros((n_img, out_channels, h_img, w_img))
    count_mat = inputs.new_zeros((n_img, 1, h_img, w_img))
    jobs = [(i, box) for i in range(n_img) for box in boxes]
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        crops = torch.stack([inputs[i, :, y1:y2, x1:x2] for i, (y1, y2, x1, x2) in chunk])
        window_shape = crops.shape[2:]  # a torch.Size, as in mmseg (marks slide inference)
        metas = [dict(batch_img_metas[i], img_shape=window_shape) for i, _ in chunk]
        logits = encode_decode(crops, metas)
        for logit, (i, (y1, y2, x1, x2)) in zip(logits, chunk):
            preds[i, :, y1:y2, x1:x2] += logit
            count_mat[i, :, y1:y2, x1:x2] += 1
    assert (count_mat == 0).sum() == 0
    return preds / count_mat


@register_model
class BatchedSlideEncoderDecoder(EncoderDecoder):
    """mmseg ``EncoderDecoder`` whose slide inference batches the windows.

    ``test_cfg=dict(mode='slide', crop_size=..., stride=..., slide_batch_size=8)`` runs up
    to 8 windows (of all images of the batch) per network call; without
    ``slide_batch_size`` (or with ``None``/0) it is mmseg's one-window-position-at-a-time
    ``slide_inference``. The base of this project's segmentors.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        batch_size = (self.test_cfg or {}).get('slide_batch_size', None)
        if batch_size:
            _check_batch_size(batch_size)

    def slide_inference(self, inputs: torch.Tensor, batch_img_metas: List[dict]) -> torch.Tensor:
        batch_size = self.test_cfg.get('slide_batch_size', None)
        if not batch_size:
            return super().slide_inference(inputs, batch_img_metas)
        return batched_slide_inference(
            self.encode_decode, inputs, batch_img_metas, self.test_cfg['crop_size'],
            self.test_cfg['stride'], self.out_channels, batch_size)
