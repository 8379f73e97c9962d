# The original release's name for ../soma/fft_dinov2-L_mask2former.py.
_base_ = ['../soma/fft_dinov2-L_mask2former.py']
