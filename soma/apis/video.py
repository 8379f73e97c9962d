"""Video inference (``tools/video_demo.py``): a segmentor over every frame of a video.

    python tools/video_demo.py CONFIG CHECKPOINT VIDEO --out OUT.mp4 [--backbone CONVERTED]
        [--onnx MODEL.onnx] [--batch-size N] [--labels-dir DIR] [--opacity A]

Frames are read with opencv and predicted ``--batch-size`` at a time, in PyTorch (the model
of ``CONFIG`` + ``CHECKPOINT`` as ``tools/test.py`` loads it, the config's test pipeline and
test mode) or, with ``--onnx``, by the onnxruntime runner on the exported model (CONFIG and
CHECKPOINT are then not loaded: the file holds everything). Written: ``OUT`` (the frames
with the class colours laid over them, mp4v, the input's frame rate) and, with
``--labels-dir``, one label PNG per frame (``DIR/<frame:06d>.png``). Each file appears
complete or not at all.
"""
import argparse
import os
import os.path as osp
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from mmengine.config import Config
from mmengine.dataset import Compose
from mmengine.utils import ProgressBar

from soma.apis.inference import init_model, test_pipeline_of
from soma.checkpoints.layout import CheckpointLike, PathLike
from soma.deploy.runtime import (DeployError, OnnxSegmentor, VideoSink, blend, iter_video,
                                 label_dtype, video_info, write_png)
from soma.utils.cli import ArgumentParser, run_cli

__all__ = ['TorchVideoSegmentor', 'segment_video', 'parse_args', 'main']


class TorchVideoSegmentor:
    """Batched frame prediction with a PyTorch segmentor (``init_model``), through the
    config's test pipeline (on arrays) and ``test_step``, as ``inference_model``."""

    def __init__(self, model, batch_size=4):
        self.model = model
        self.batch_size = batch_size
        self.pipeline = Compose(test_pipeline_of(model.cfg, for_arrays=True))
        self.palette = model.dataset_meta['palette']
        self.num_classes = len(model.dataset_meta['classes'])

    def labels(self, frames: Sequence[np.ndarray]) -> list:
        """``h x w`` label maps of BGR uint8 frames of one size."""
        samples = [self.pipeline(dict(img=frame)) for frame in frames]
        data = dict(inputs=[s['inputs'] for s in samples],
                    data_samples=[s['data_samples'] for s in samples])
        with torch.no_grad():
            results = self.model.test_step(data)
        return [r.pred_sem_seg.data[0].cpu().numpy() for r in results]


class _OnnxVideoSegmentor:
    def __init__(self, path, batch_size):
        self.runner = OnnxSegmentor(path, batch_size=batch_size)
        self.batch_size = self.runner.batch_size
        self.palette = self.runner.palette
        self.num_classes = len(self.runner.classes)

    def labels(self, frames):
        return [label for label, _ in self.runner.predict(frames)]


def segment_video(config: Union[PathLike, Config, dict], checkpoint: Optional[CheckpointLike],
                  video: PathLike, out: PathLike, backbone: Optional[CheckpointLike] = None,
                  onnx: Optional[PathLike] = None, batch_size: int = 4,
                  labels_dir: Optional[PathLike] = None, opacity: float = 0.5,
                  cfg_options: Optional[dict] = None) -> dict:
    """Segment every frame of ``video``; write the overlay video ``out`` (and the label PNGs
    into ``labels_dir``). Returns ``{'frames': n, 'out': out, 'labels': [paths]}``."""
    if batch_size < 1:
        raise ValueError(f'--batch-size must be >= 1, got {batch_size}')
    video = os.fspath(video)
    if not osp.isfile(video):
        raise FileNotFoundError(f'video not found: {video}')
    fps, count = video_info(video)
    if onnx is not None:
        segmentor = _OnnxVideoSegmentor(onnx, batch_size)
    else:
        segmentor = TorchVideoSegmentor(
            init_model(config, checkpoint, device='cuda' if torch.cuda.is_available() else 'cpu',
                       backbone=backbone, cfg_options=cfg_options), batch_size)
    dtype = label_dtype(segmentor.num_classes)
    bar = ProgressBar(count)
    sink, labels, index = None, [], 0
    try:
        for frames in iter_video(video, segmentor.batch_size):
            if sink is None:
                sink = VideoSink(out, fps, (frames[0].shape[1], frames[0].shape[0]))
            for frame, label in zip(frames, segmentor.labels(frames)):
                sink.write(blend(frame, label, segmentor.palette, opacity))
                if labels_dir:
                    labels.append(osp.join(labels_dir, f'{index:06d}.png'))
                    write_png(labels[-1], label.astype(dtype))
                index += 1
                bar.update()
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    print()
    if sink is None:
        raise DeployError(f'{video}: no frame could be read')
    sink.close()
    return dict(frames=index, out=os.fspath(out), labels=labels)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The command line of ``tools/video_demo.py``."""
    parser = ArgumentParser(description='Segment a video with a SoMA model')
    parser.add_argument('config', help='config file (not read with --onnx)')
    parser.add_argument('checkpoint', help='checkpoint (not read with --onnx)')
    parser.add_argument('video', help='input video (anything opencv reads)')
    parser.add_argument('--out', required=True, help='output overlay video (.mp4)')
    parser.add_argument('--backbone', help='converted backbone for an adapter-only checkpoint')
    parser.add_argument('--onnx', help='run this exported model with onnxruntime instead')
    parser.add_argument('--batch-size', type=int, default=4, help='frames per forward')
    parser.add_argument('--labels-dir', help='also write one label PNG per frame here')
    parser.add_argument('--opacity', type=float, default=0.5, help='overlay colour opacity')
    parser.add_cfg_options()
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    """``tools/video_demo.py``: segment a video, one-line errors, exit code."""
    args = parse_args(argv)
    return run_cli(segment_video, args.config, args.checkpoint, args.video, args.out,
                   backbone=args.backbone, onnx=args.onnx, batch_size=args.batch_size,
                   labels_dir=args.labels_dir, opacity=args.opacity,
                   cfg_options=args.cfg_options)
