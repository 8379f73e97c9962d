"""Tiny trained models on disk for the deployment tests.

Checkpoints come from a real one-iteration ``tools/train.py`` run on the synthetic benchmark
(so the SoMA / peft metadata is what the project writes), then their adapters' ``lora_B``
are set to random non-zero values so that the adapters change every prediction; adapter-only
checkpoints are cut from them by ``tools/extract_soma_weights.py``.
"""
import copy
import os
import os.path as osp
import sys

import cv2
import numpy as np
import torch
from mmseg.structures import SegDataSample

from soma.apis import train as train_api
from soma.apis.demo import demo_config

TESTS = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(TESTS, 'tools'))
from _tool_runner import REPO, tool_main  # noqa: E402,F401

SIZE = 64
SOMA = dict(lora_cfg=dict(type='soma', r=4, lora_alpha=8, start_lora_idx=2))
PEFT_LORA = dict(peft_cfg=dict(type='LoraConfig', r=4, lora_alpha=8, start_lora_idx=2))
DINOV2 = dict(type='DinoVisionTransformer', img_size=SIZE, patch_size=16, embed_dim=64,
              depth=4, num_heads=2, init_values=1.0, out_indices=[0, 1, 2, 3])


def fcn_head(channels=64, num_classes=19):
    return dict(type='FCNHead', in_channels=channels, in_index=3, channels=16, num_convs=1,
                concat_input=False, dropout_ratio=0.0, num_classes=num_classes,
                norm_cfg=dict(type='GN', num_groups=4), align_corners=False,
                loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0))


def semantic_fpn(channels=64):
    """Neck and head of configs/_base_/models/dinov2_semfpn.py, small (SyncBN as there)."""
    neck = dict(type='FPN', in_channels=[channels] * 4, out_channels=32, num_outs=4)
    head = dict(type='FPNHead', in_channels=[32] * 4, in_index=[0, 1, 2, 3],
                feature_strides=[4, 8, 16, 32], channels=16, dropout_ratio=0.0,
                num_classes=19, norm_cfg=dict(type='SyncBN', requires_grad=True),
                align_corners=False,
                loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0))
    return neck, head


def converted_dinov2(path, seed=7, img_size=SIZE):
    """A 'converted DINOv2' file for :data:`DINOV2` (plain DINOv2 keys)."""
    from soma.models.backbones.dinov2 import DinoVisionTransformer
    torch.manual_seed(seed)
    cfg = {k: v for k, v in DINOV2.items() if k != 'type'}
    cfg['img_size'] = img_size
    torch.save(DinoVisionTransformer(**cfg).state_dict(), path)
    return path


def hf_folder(folder, model_type, seed=0):
    """A random tiny transformers ViT saved with ``save_pretrained`` (norms moved off 1)."""
    import transformers
    fields = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, patch_size=16)
    fields.update({
        'dinov3_vit': dict(intermediate_size=64, num_register_tokens=4, image_size=SIZE,
                           layerscale_value=0.5, pos_embed_rescale=None),
        'dinov2': dict(mlp_ratio=2, image_size=SIZE),
        'dinov2_with_registers': dict(mlp_ratio=2, image_size=SIZE, num_register_tokens=4),
        'siglip2_vision_model': dict(intermediate_size=64, num_patches=16,
                                     vision_use_head=False),
    }[model_type])
    config = transformers.AutoConfig.for_model(model_type, **fields)
    torch.manual_seed(seed)
    cls = {'dinov3_vit': 'DINOv3ViTModel', 'dinov2': 'Dinov2Model',
           'dinov2_with_registers': 'Dinov2WithRegistersModel',
           'siglip2_vision_model': 'Siglip2VisionModel'}[model_type]
    model = getattr(transformers, cls)(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1:
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(str(folder))
    return str(folder)


def write_config(data_root, work, backbone, decode_head, neck=None, model_type=None,
                 test_cfg=None, test_resize=None):
    """The demo config (synthetic data, SoMAMetaHook) with this model, one iteration."""
    cfg = demo_config(data_root, work, 1, val=False, image_size=SIZE)
    cfg.model.backbone = copy.deepcopy(backbone)
    cfg.model.decode_head = copy.deepcopy(decode_head)
    if neck is not None:
        cfg.model.neck = copy.deepcopy(neck)
    if model_type is not None:
        cfg.model.type = model_type
    if test_cfg is not None:
        cfg.model.test_cfg = test_cfg
    if test_resize is not None:
        for pipeline in [cfg.test_pipeline] + [d['pipeline'] for d in
                                               cfg.test_dataloader.dataset.datasets]:
            for step in pipeline:
                if step['type'] == 'Resize':
                    step['scale'] = test_resize
    cfg.default_hooks.logger.interval = 1
    os.makedirs(work, exist_ok=True)
    path = osp.join(work, 'cfg.py')
    cfg.dump(path)
    return path


def randomize_adapters(path, seed=0, scale=0.2):
    """Give every ``lora_B`` of the checkpoint random values (in place); returns ``path``."""
    ckpt = torch.load(path, map_location='cpu', weights_only=True)
    g = torch.Generator().manual_seed(seed)
    state_dict = ckpt['state_dict']
    changed = 0
    for key, value in state_dict.items():
        if 'lora_B' in key:
            state_dict[key] = scale * torch.randn(value.shape, generator=g)
            changed += 1
    torch.save({'state_dict': state_dict, 'meta': ckpt.get('meta', {})}, path)
    return changed


def trained_checkpoint(config, work, seed=0):
    """``tools/train.py CONFIG`` for one iteration; the checkpoint with random adapters."""
    assert train_api.main([config, '--work-dir', work]) == 0
    path = osp.join(work, 'iter_1.pth')
    changed = randomize_adapters(path, seed)
    return path, changed


def adapter_only(full, out):
    """``tools/extract_soma_weights.py`` of a full checkpoint."""
    assert tool_main('extract_soma_weights.py', '--final_ckpt', full, '--soma_ckpt', out) == 0
    return out


def random_images(n, h, w, seed=0):
    """``n`` BGR uint8 images ``h x w x 3``."""
    return np.random.RandomState(seed).randint(0, 256, (n, h, w, 3), dtype=np.uint8)


def decoded_frames(path):
    """Every frame opencv decodes from the video at ``path`` (BGR uint8)."""
    cap, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, frame = cap.read()
        if not ok:
            return frames
        frames.append(frame)


def as_graph_input(images_bgr):
    """BGR uint8 ``N x H x W x 3`` -> the graph's ``image``: float32 RGB ``N x 3 x H x W``."""
    return np.ascontiguousarray(images_bgr[..., ::-1].transpose(0, 3, 1, 2), dtype=np.float32)


def mmseg_logits(model, images_bgr):
    """Seg logits of mmseg's own path (data preprocessor + ``test_step``) at the images'
    size, ``N x C x H x W``."""
    h, w = images_bgr.shape[1:3]
    data = dict(inputs=[torch.from_numpy(img.transpose(2, 0, 1).copy()) for img in images_bgr],
                data_samples=[SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w)))
                              for _ in images_bgr])
    with torch.no_grad():
        results = model.test_step(data)
    return torch.stack([r.seg_logits.data for r in results]).numpy()


def onnx_names(path):
    """Names of every initializer and node of an ONNX file."""
    import onnx
    model = onnx.load(path)
    return [t.name for t in model.graph.initializer] + [n.name for n in model.graph.node]


def assert_logits_match(got, want, label_share=0.999):
    """Logits within 1e-3 of their range and >= 99.9 % of the arg-max labels equal."""
    assert got.shape == want.shape, (got.shape, want.shape)
    span = float(want.max() - want.min())
    diff = float(np.abs(got - want).max())
    assert diff <= 1e-3 * span, (diff, span)
    same = (got.argmax(1) == want.argmax(1)).mean()
    assert same >= label_share, same
