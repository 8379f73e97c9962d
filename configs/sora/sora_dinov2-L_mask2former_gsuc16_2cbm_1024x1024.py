# The original release's name for ../soma/soma_dinov2-L_mask2former_gsuc16_2cbm_1024x1024.py.
_base_ = ['../soma/soma_dinov2-L_mask2former_gsuc16_2cbm_1024x1024.py']
