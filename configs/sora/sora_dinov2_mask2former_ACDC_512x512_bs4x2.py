# The original release's name for ../soma/soma_dinov2_mask2former_ACDC_512x512_bs4x2.py.
_base_ = ['../soma/soma_dinov2_mask2former_ACDC_512x512_bs4x2.py']
