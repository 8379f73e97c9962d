"""Shared test set-up: tiny model configs and a deterministic, headless environment."""
import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
os.environ.setdefault('MPLBACKEND', 'Agg')

# A 4-block DINOv2 small enough for every test; configs override the release's ViT-L with it.
TINY_BACKBONE = dict(
    type='DinoVisionTransformer', img_size=64, patch_size=16, embed_dim=64, depth=4,
    num_heads=2, out_indices=[0, 1, 2, 3], init_cfg=None)


@pytest.fixture
def repo_root():
    return REPO_ROOT


@pytest.fixture
def tiny_backbone_cfg():
    return dict(TINY_BACKBONE)
