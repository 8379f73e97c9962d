# The original release's name for ../soma/soma_dinov2-L_mask2former_gsu2cbm.py.
_base_ = ['../soma/soma_dinov2-L_mask2former_gsu2cbm.py']
