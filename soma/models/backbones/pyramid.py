"""The output convention shared by the backbones: patch tokens as a 4-level feature pyramid.

The patch tokens after the 4 ``out_indices`` blocks (no final norm), as maps of stride
``patch``, resampled bilinearly (``align_corners=False``) by x4, x2, x1, x0.5: strides 4, 8,
16, 32 for patch 16 (SPEC 2). Every map is contiguous: they feed mmcv ops (Mask2Former's
deformable attention, the detector's neck), which read raw memory.
"""
import torch
import torch.nn.functional as F

__all__ = ['PYRAMID_SCALES', 'patch_tokens_to_map', 'feature_pyramid']

PYRAMID_SCALES = (4, 2, 1, 0.5)


def patch_tokens_to_map(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Patch tokens (B, h * w, D) -> a contiguous map (B, D, h, w)."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w).contiguous()


def feature_pyramid(maps):
    """The 4 maps of the ``out_indices`` blocks, each resampled by its scale of
    :data:`PYRAMID_SCALES` (x0.5 sizes rounded down)."""
    return tuple(m if s == 1 else F.interpolate(m, scale_factor=s, mode='bilinear',
                                                align_corners=False)
                 for m, s in zip(maps, PYRAMID_SCALES))
