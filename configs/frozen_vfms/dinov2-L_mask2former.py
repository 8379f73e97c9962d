# The original release's name for ../soma/frozen_dinov2-L_mask2former.py.
_base_ = ['../soma/frozen_dinov2-L_mask2former.py']
