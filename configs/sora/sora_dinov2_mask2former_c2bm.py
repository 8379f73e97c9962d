# The original release's name for ../soma/soma_dinov2_mask2former_c2bm.py.
_base_ = ['../soma/soma_dinov2_mask2former_c2bm.py']
