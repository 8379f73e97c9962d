_base_ = ['../soma/soma_dinov2-L_codetr_dg.py']  # the release's name for this config
