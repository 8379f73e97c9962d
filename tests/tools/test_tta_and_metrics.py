"""tools/test.py metrics and test-time augmentation against independent references.

- ``--tta`` (tools/test.py and ``inference_model(tta=True)``) is checked against the
  augmentation done by hand: every rescaled (cv2, bilinear) and flipped copy of the image goes
  through the tiny segmentor's network (backbone + head, normalised as its data preprocessor
  does at test time), its logits are resized to the input, flipped back and resized to the
  image size, softmaxed and averaged -- what mmseg's ``SegTTAModel`` does.
- the metrics tools/test.py returns are checked against mmseg's ``IoUMetric`` fed by hand
  with the prediction PNGs ``--out`` wrote and the label files.
Tiny 4-block SoMA ViT with an FCN head, 48x64 synthetic images (2 per target domain).
"""
import copy
import glob
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import soma  # noqa: F401
from soma.apis import inference_model, init_model, run_test
from soma.apis.demo import demo_config
from soma.datasets import make_synthetic_dg_benchmark
from soma.datasets.synthetic_seg import CITYSCAPES_CLASSES
from soma.utils.checkpoint_io import save_checkpoint_file
from conftest import TINY_FCN_HEAD  # noqa: E402

HW = (48, 64)
RATIOS = (0.75, 1.0, 1.25)
FCN_HEAD = TINY_FCN_HEAD


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """Synthetic targets, a config with a TTA pipeline, and a checkpoint of a 'trained' model."""
    root = tmp_path_factory.mktemp('tta_metrics')
    data_root = root / 'data'
    make_synthetic_dg_benchmark(data_root, num_train=1, num_val=2, size=HW)
    cfg = demo_config(data_root, root / 'work', 1, val=True, image_size=HW[1])
    cfg.model.decode_head = copy.deepcopy(FCN_HEAD)
    # inference_model reads cfg.test_pipeline: the same as the test loader's
    cfg.test_pipeline = copy.deepcopy(cfg.test_dataloader.dataset.datasets[0].pipeline)
    cfg.tta_pipeline[1]['transforms'][0] = [
        dict(type='Resize', scale_factor=r, keep_ratio=True) for r in RATIOS]
    config = str(root / 'cfg.py')
    cfg.dump(config)
    torch.manual_seed(0)  # the same random model whatever ran before
    model = init_model(config)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # well separated logits, so that the label maps are stable
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    ckpt = str(root / 'model.pth')
    save_checkpoint_file({'state_dict': model.state_dict(),
                          'meta': {'soma': model.backbone.checkpoint_meta()}}, ckpt)
    images = sorted(glob.glob(str(data_root / '*' / 'leftImg8bit' / 'val' / '*' / '*.png')))
    assert len(images) == 4
    return dict(root=root, config=config, ckpt=ckpt, images=images,
                model=init_model(config, ckpt))


def _network_logits(model, bgr):
    """Logits of the segmentor's network for one BGR image, resized to the image's size."""
    pre = model.data_preprocessor
    assert not pre.test_cfg  # no padding at test time (``size`` pads training batches only)
    x = torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1])).permute(2, 0, 1).float()
    x = ((x - pre.mean) / pre.std)[None]
    with torch.no_grad():
        logits = model.decode_head(model.extract_feat(x))
    return F.interpolate(logits, size=x.shape[2:], mode='bilinear', align_corners=False)


def reference_tta(model, path):
    """(mean softmax over rescaled x flipped copies, logits of the last copy), at image size."""
    bgr = cv2.imread(path)
    h, w = bgr.shape[:2]
    probs, last = [], None
    for r in RATIOS:
        scaled = cv2.resize(bgr, (int(w * r + 0.5), int(h * r + 0.5)),
                            interpolation=cv2.INTER_LINEAR)
        for flip in (False, True):
            logits = _network_logits(model, scaled[:, ::-1] if flip else scaled)
            if flip:
                logits = logits.flip(3)
            last = F.interpolate(logits, size=(h, w), mode='bilinear', align_corners=False)[0]
            probs.append(last.softmax(0))
    return torch.stack(probs).mean(0), last


def _stable(prob, margin=1e-5):
    """Pixels whose top two classes differ by more than ``margin`` (no float ties)."""
    top2 = prob.topk(2, dim=0).values
    return (top2[0] - top2[1]) > margin


def test_inference_tta_equals_hand_made_augmentation(files):
    model = files['model']
    for path in files['images'][::2]:  # one image of each domain
        prob, last = reference_tta(model, path)
        result = inference_model(model, path, tta=True)
        stable = _stable(prob)
        assert stable.float().mean() > 0.95
        pred = result.pred_sem_seg.data[0]
        assert tuple(pred.shape) == HW
        assert torch.equal(pred[stable], prob.argmax(0)[stable])
        # SegTTAModel keeps the logits of the last augmented copy (x1.25, flipped)
        torch.testing.assert_close(result.seg_logits.data, last, atol=1e-4, rtol=1e-4)
        # the averaging matters: the plain prediction differs from the TTA one
        plain = inference_model(model, path).pred_sem_seg.data[0]
        assert not torch.equal(plain, pred)


def _label_path(image):
    return image.replace('/leftImg8bit/', '/gtFine/').replace(
        '_leftImg8bit.png', '_gtFine_labelTrainIds.png')


def _iou_metric_by_hand(out_dir, images):
    """mmseg ``IoUMetric`` per domain on the PNGs of ``out_dir`` and the label files."""
    from mmseg.evaluation import IoUMetric
    metrics = {}
    for domain in ('fog', 'night'):
        metric = IoUMetric(iou_metrics=['mIoU'], ignore_index=255)
        metric.dataset_meta = dict(classes=CITYSCAPES_CLASSES)
        for image in images:
            if f'/{domain}/' not in image:
                continue
            name = osp.splitext(osp.basename(image))[0] + '.png'
            pred = np.array(Image.open(osp.join(out_dir, name)))
            gt = np.array(Image.open(_label_path(image)))
            assert pred.shape == gt.shape == HW
            metric.process({}, [dict(pred_sem_seg=dict(data=torch.from_numpy(pred)[None]),
                                     gt_sem_seg=dict(data=torch.from_numpy(gt)[None]))])
        for key, value in metric.compute_metrics(metric.results).items():
            metrics[f'{domain}_{key}'] = value
    return metrics


@pytest.mark.parametrize('tta', [False, True], ids=['plain', 'tta'])
def test_tools_test_metrics_equal_iou_metric_on_written_predictions(files, tta):
    out = files['root'] / ('out_tta' if tta else 'out')
    argv = [files['config'], files['ckpt'], '--out', str(out),
            '--work-dir', str(files['root'] / ('w_tta' if tta else 'w'))]
    metrics = run_test(argv + (['--tta'] if tta else []))
    by_hand = _iou_metric_by_hand(str(out), files['images'])
    for key in ('fog_mIoU', 'night_mIoU', 'fog_aAcc', 'night_aAcc'):
        assert metrics[key] == pytest.approx(by_hand[key], abs=1e-9), key
    assert metrics['mean_mIoU'] == pytest.approx(
        (by_hand['fog_mIoU'] + by_hand['night_mIoU']) / 2, abs=1e-9)
    # the written label maps are the model's predictions (TTA: the hand-made average)
    model = files['model']
    for image in files['images']:
        written = torch.from_numpy(np.array(Image.open(
            osp.join(out, osp.splitext(osp.basename(image))[0] + '.png'))).astype(np.int64))
        if tta:
            prob, _ = reference_tta(model, image)
        else:  # the test pipeline's Resize to (64, 64) keeps a 48x64 image as it is
            prob = _network_logits(model, cv2.imread(image))[0].softmax(0)
        stable = _stable(prob)
        assert stable.float().mean() > 0.95
        assert torch.equal(written[stable], prob.argmax(0)[stable])
