# The original release's name for ../soma/soma_dinov2_mask2former_ACDC_1024x1024_bs4x2.py.
_base_ = ['../soma/soma_dinov2_mask2former_ACDC_1024x1024_bs4x2.py']
