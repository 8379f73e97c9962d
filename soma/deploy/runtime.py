"""Run an exported SoMA segmentor with onnxruntime: numpy, opencv and onnxruntime only.

    python tools/deploy/onnx_infer.py MODEL.onnx INPUT... --out DIR [--batch-size N]
        [--frame-labels] [--opacity A] [--threads T]

INPUT: image files, folders (their images and videos, sorted) and video files. Written to
``DIR`` (each file complete or absent: temporary file in the folder, then renamed):

* ``labels/<name>.png``: the label map (class index per pixel, uint8), at the input's size;
* ``overlays/<name>.png``: the image blended with the class colours;
* for a video: ``<name>_overlay.mp4`` (mp4v) and, with ``--frame-labels``,
  ``labels/<name>/<frame:06d>.png``.

What ``tools/test.py`` does is reproduced from the metadata that ``export_onnx`` wrote into
the file (keys ``soma.*``, JSON values): the test pipeline's ``Resize`` (cv2 bilinear on the
BGR uint8 image, mmcv's size rule), the config's test mode (``whole``, or ``slide`` with its
crop and stride: mmseg's windows, logits summed and divided by the window count), then the
logits resized bilinearly back to the input's size and the arg-max. The graph normalises
its RGB 0..255 input itself. Windows (or frames) go through the graph ``--batch-size`` at a
time when its batch dimension is free, one at a time otherwise.

This module imports no torch, no OpenMMLab and, loaded from its file, nothing of ``soma``:
``import soma`` imports torch and registers every model, so ``tools/deploy/onnx_infer.py``
loads this file by its path instead of importing the package (see README, developer notes).
"""
import argparse
import collections
import importlib.util
import json
import os
import os.path as osp
import sys
import time

import cv2
import numpy as np


def _module_from_file(name: str, relative: str):
    """A module of this project loaded from its file (``relative`` to ``soma/``), without
    importing the ``soma`` package (which imports torch)."""
    path = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), relative)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# the project's one atomic writer (pure Python): imported when this module is soma.deploy's
# (the package, hence torch, is loaded already), loaded from its file when this module was
# (tools/deploy/onnx_infer.py): it stays free of soma, hence of torch
if __package__:
    from ..utils.atomic import atomic_output
else:
    atomic_output = _module_from_file('soma_atomic',
                                      osp.join('utils', 'atomic.py')).atomic_output

__all__ = ['DeployError', 'META_PREFIX', 'IMAGE_EXTS', 'VIDEO_EXTS', 'read_metadata',
           'OnnxSegmentor', 'resize_image', 'resize_logits', 'slide_windows', 'colorize',
           'blend', 'read_image', 'list_inputs', 'iter_video', 'video_info', 'VideoSink',
           'atomic_output', 'write_png', 'label_dtype', 'run', 'segment_video', 'parse_args',
           'main']

META_PREFIX = 'soma.'
IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
VIDEO_EXTS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg', '.mpeg')
# mmcv's interpolation names -> cv2 codes (mmcv.image.geometric.cv2_interp_codes)
CV2_INTERPOLATION = {'nearest': cv2.INTER_NEAREST, 'bilinear': cv2.INTER_LINEAR,
                     'bicubic': cv2.INTER_CUBIC, 'area': cv2.INTER_AREA,
                     'lanczos': cv2.INTER_LANCZOS4}


class DeployError(ValueError):
    """A user error of the runner; the message is one line naming the file or setting."""


# ------------------------------------------------------------------------- the model
def read_metadata(session) -> dict:
    """The ``soma.*`` metadata of an onnxruntime session, decoded from JSON, prefix removed."""
    raw = session.get_modelmeta().custom_metadata_map
    meta = {}
    for key, value in raw.items():
        if key.startswith(META_PREFIX):
            try:
                meta[key[len(META_PREFIX):]] = json.loads(value)
            except ValueError:
                meta[key[len(META_PREFIX):]] = value
    return meta


def _dim(value):
    """A graph dimension as an int, or None when it is free (a name or unknown)."""
    return value if isinstance(value, int) and value > 0 else None


class OnnxSegmentor:
    """An exported segmentor in an onnxruntime session, with ``tools/test.py``'s pre- and
    post-processing (see the module docstring).

    Args:
        path: the ``.onnx`` file written by ``tools/deploy/export_onnx.py``.
        batch_size: most windows/images per graph call when the batch is free (default: the
            config's ``slide_batch_size``, else 8); a graph of batch 1 takes one at a time.
        providers: onnxruntime execution providers (default: CPU).
        threads: onnxruntime intra-op threads (default: onnxruntime's choice).
    """

    def __init__(self, path, batch_size=None, providers=None, threads=None):
        import onnxruntime as ort  # the deployment dependency; imported when a model loads
        path = os.fspath(path)
        if not osp.isfile(path):
            raise DeployError(f'model not found: {path}')
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(
                path, options, providers=providers or ['CPUExecutionProvider'])
        except Exception as e:  # noqa: BLE001  (onnxruntime raises its own exception types)
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise DeployError(f'{path}: not a loadable ONNX model ({reason})') from None
        self.path = path
        self.meta = read_metadata(self.session)
        if self.meta.get('task') != 'segmentation':
            raise DeployError(f'{path}: not a segmentation model exported by '
                              f'tools/deploy/export_onnx.py (soma.task is '
                              f'{self.meta.get("task")!r})')
        inputs = self.session.get_inputs()
        if [i.name for i in inputs] != ['image'] or len(inputs[0].shape) != 4:
            raise DeployError(f'{path}: expected one input "image" N x 3 x H x W, got '
                              f'{[(i.name, i.shape) for i in inputs]}')
        n, c, h, w = inputs[0].shape
        if _dim(h) is None or _dim(w) is None or c != 3:
            raise DeployError(f'{path}: the input must be N x 3 x H x W with a fixed H and W, '
                              f'got {inputs[0].shape}')
        self.input_hw = (h, w)
        self.fixed_batch = _dim(n)
        if self.fixed_batch not in (None, 1):
            raise DeployError(f'{path}: a fixed batch of {n}; export with batch 1 or '
                              f'--dynamic-batch')
        if batch_size is not None and int(batch_size) < 1:
            raise DeployError(f'batch size must be >= 1, got {batch_size}')
        default = self.meta.get('slide_batch_size') or 8
        self.batch_size = 1 if self.fixed_batch else int(
            default if batch_size is None else batch_size)
        self.classes = list(self.meta.get('classes') or [])
        self.palette = self.meta.get('palette') or []
        self.mode = self.meta.get('test_mode', 'whole')
        if self.mode not in ('whole', 'slide'):
            raise DeployError(f'{path}: unknown test mode {self.mode!r}')
        self.align_corners = bool(self.meta.get('align_corners', False))

    def run_graph(self, batch: np.ndarray) -> np.ndarray:
        """Logits ``n x C x H x W`` of a float32 batch ``n x 3 x H x W`` (RGB, 0..255)."""
        batch = np.asarray(batch)
        if batch.ndim != 4 or batch.shape[1] != 3 or tuple(batch.shape[2:]) != self.input_hw:
            raise DeployError(
                f'{self.path}: input of shape {tuple(batch.shape)}, the model takes '
                f'N x 3 x {self.input_hw[0]} x {self.input_hw[1]}')
        if self.fixed_batch and batch.shape[0] != self.fixed_batch:
            raise DeployError(f'{self.path}: batch of {batch.shape[0]}, the model takes '
                              f'{self.fixed_batch} (export with --dynamic-batch for more)')
        feed = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run(['logits'], {'image': feed})[0]

    def preprocess(self, bgr: np.ndarray) -> np.ndarray:
        """The test pipeline's resize of a BGR uint8 image, as ``3 x H x W`` float32 RGB."""
        img = resize_image(bgr, self.meta.get('resize'))
        return np.ascontiguousarray(img[..., ::-1].transpose(2, 0, 1), dtype=np.float32)

    def _windows(self, h, w):
        if self.mode == 'whole':
            boxes = [(0, h, 0, w)]
        else:
            boxes = slide_windows(h, w, self.meta['crop_size'], self.meta['stride'])
        y1, y2, x1, x2 = boxes[0]
        if (y2 - y1, x2 - x1) != self.input_hw:
            hint = ('the crop size of the config' if self.mode == 'slide'
                    else 'the size of the resized image')
            raise DeployError(
                f'{self.path}: the {self.mode} inference needs {y2 - y1} x {x2 - x1} inputs '
                f'(image resized to {h} x {w}), the model takes {self.input_hw[0]} x '
                f'{self.input_hw[1]}: export it with --shape equal to {hint}')
        return boxes

    def logits_of(self, images) -> list:
        """Seg logits ``C x H x W`` of preprocessed images (``3 x H x W``, one size), as
        mmseg's whole or (batched) slide inference gives them."""
        h, w = images[0].shape[1:]
        if any(img.shape[1:] != (h, w) for img in images):
            raise DeployError('images of one batch must have the same size')
        boxes = self._windows(h, w)
        jobs = [(i, box) for i in range(len(images)) for box in boxes]
        preds, counts = None, np.zeros((len(images), 1, h, w), np.float32)
        for start in range(0, len(jobs), self.batch_size):
            chunk = jobs[start:start + self.batch_size]
            crops = np.stack([images[i][:, y1:y2, x1:x2] for i, (y1, y2, x1, x2) in chunk])
            logits = self.run_graph(crops)
            if preds is None:
                preds = np.zeros((len(images), logits.shape[1], h, w), np.float32)
            for logit, (i, (y1, y2, x1, x2)) in zip(logits, chunk):
                preds[i, :, y1:y2, x1:x2] += logit
                counts[i, :, y1:y2, x1:x2] += 1
        return list(preds / counts) if len(boxes) > 1 else list(preds)

    def predict(self, images_bgr) -> list:
        """``(label, logits)`` per BGR uint8 image (one size): logits ``C x h x w`` and the
        ``h x w`` arg-max at the image's own size, as ``tools/test.py`` predicts them."""
        images = [self.preprocess(img) for img in images_bgr]
        results = []
        for bgr, logits in zip(images_bgr, self.logits_of(images)):
            logits = resize_logits(logits, bgr.shape[:2], self.align_corners)
            results.append((logits.argmax(0), logits))
        return results


# ------------------------------------------------------------------ pre/post-processing
def _scale_size(w, h, factor):
    """mmcv's ``_scale_size``: ``(int(w * fw + 0.5), int(h * fh + 0.5))``."""
    fw, fh = (factor, factor) if isinstance(factor, (int, float)) else factor
    return int(w * float(fw) + 0.5), int(h * float(fh) + 0.5)


def resize_image(img: np.ndarray, resize) -> np.ndarray:
    """mmcv's ``Resize`` of the test pipeline (cv2 backend): ``resize`` is the recorded
    ``{scale, scale_factor, keep_ratio, interpolation}`` or None (no resize)."""
    if not resize:
        return img
    h, w = img.shape[:2]
    scale = resize.get('scale')
    if scale is None:
        scale = _scale_size(w, h, resize['scale_factor'])
    scale = (scale, scale) if isinstance(scale, (int, float)) else tuple(scale)
    if resize.get('keep_ratio'):  # mmcv.imrescale: as large as fits, (long, short) edges
        factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
        size = _scale_size(w, h, factor)
    else:
        size = (int(scale[0]), int(scale[1]))
    return cv2.resize(img, size, interpolation=CV2_INTERPOLATION[
        resize.get('interpolation', 'bilinear')])


def _source_index(out_size, in_size, align_corners):
    """PyTorch's bilinear source positions: ``(i0, i1, weight of i1)`` per output index."""
    dst = np.arange(out_size, dtype=np.float64)
    if align_corners:
        src = dst * ((in_size - 1) / (out_size - 1) if out_size > 1 else 0.0)
    else:
        src = np.maximum((dst + 0.5) * (in_size / out_size) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, (src - i0).astype(np.float32)


def resize_logits(logits: np.ndarray, size, align_corners=False) -> np.ndarray:
    """``C x H x W`` -> ``C x size`` bilinearly, as ``F.interpolate(mode='bilinear')``."""
    h, w = int(size[0]), int(size[1])
    if logits.shape[1:] == (h, w):
        return logits
    y0, y1, wy = _source_index(h, logits.shape[1], align_corners)
    x0, x1, wx = _source_index(w, logits.shape[2], align_corners)
    rows = logits[:, y0] * (1 - wy)[:, None] + logits[:, y1] * wy[:, None]
    return rows[:, :, x0] * (1 - wx) + rows[:, :, x1] * wx


def slide_windows(h_img, w_img, crop_size, stride) -> list:
    """``(y1, y2, x1, x2)`` of mmseg's sliding windows, in its order (row-major, the last
    row/column shifted back to end at the border, each ``min(crop, image)``)."""
    h_crop, w_crop = crop_size
    h_stride, w_stride = stride
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    boxes = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2 = min(h_idx * h_stride + h_crop, h_img)
            x2 = min(w_idx * w_stride + w_crop, w_img)
            boxes.append((max(y2 - h_crop, 0), y2, max(x2 - w_crop, 0), x2))
    return boxes


def colorize(label: np.ndarray, palette) -> np.ndarray:
    """``h x w`` label map -> ``h x w x 3`` uint8 RGB (ids outside the palette black)."""
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    out = np.zeros(label.shape + (3, ), np.uint8)
    valid = (label >= 0) & (label < len(palette))
    out[valid] = palette[label[valid]]
    return out


def blend(bgr: np.ndarray, label: np.ndarray, palette, opacity=0.5) -> np.ndarray:
    """The BGR image with the label colours laid over it (``opacity`` of the colour)."""
    colours = colorize(label, palette)[..., ::-1].astype(np.float32)
    out = bgr.astype(np.float32) * (1 - opacity) + colours * opacity
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------- files
def read_image(path) -> np.ndarray:
    """A BGR uint8 image, decoded as mmcv's ``LoadImageFromFile`` does (cv2, colour)."""
    try:
        data = np.fromfile(os.fspath(path), dtype=np.uint8)
    except OSError as e:
        raise DeployError(f'cannot read image {path}: {e.strerror or e}') from None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise DeployError(f'cannot read image {path}: not an image, or corrupt')
    return img


def list_inputs(inputs) -> list:
    """``(kind, path)`` of every input: 'image' or 'video'; a folder gives its images and
    videos, sorted. Names must be unique (they name the outputs)."""
    found = []
    for item in inputs:
        item = os.fspath(item)
        if osp.isdir(item):
            entries = sorted(os.listdir(item))
            files = [osp.join(item, e) for e in entries
                     if e.lower().endswith(IMAGE_EXTS + VIDEO_EXTS)]
            if not files:
                raise DeployError(f'no images or videos in the folder {item}')
        elif osp.isfile(item):
            files = [item]
        else:
            raise DeployError(f'input not found: {item}')
        for path in files:
            ext = osp.splitext(path)[1].lower()
            if ext not in IMAGE_EXTS + VIDEO_EXTS:
                raise DeployError(f'{path}: not an image ({", ".join(IMAGE_EXTS)}) or a video '
                                  f'({", ".join(VIDEO_EXTS)})')
            found.append(('video' if ext in VIDEO_EXTS else 'image', path))
    names = [osp.splitext(osp.basename(p))[0] for _, p in found]
    duplicates = sorted(n for n, count in collections.Counter(names).items() if count > 1)
    if duplicates:
        raise DeployError(f'two inputs named {duplicates[0]!r}: outputs are named by the '
                          f'input file name, rename one')
    return found


def iter_video(path, batch_size):
    """Batches (lists of up to ``batch_size``) of the BGR frames of a video."""
    cap = cv2.VideoCapture(os.fspath(path))
    if not cap.isOpened():
        raise DeployError(f'cannot open video {path}')
    try:
        batch = []
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            batch.append(frame)
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch
    finally:
        cap.release()


def video_info(path):
    """``(fps, frame count)`` of a video (count 0 when the container does not say)."""
    cap = cv2.VideoCapture(os.fspath(path))
    if not cap.isOpened():
        raise DeployError(f'cannot open video {path}')
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    cap.release()
    return fps, count


def write_png(path, image: np.ndarray):
    """Write ``image`` (h x w label map or h x w x 3 BGR) as a PNG, atomically."""
    ok, data = cv2.imencode('.png', image)
    if not ok:
        raise DeployError(f'could not encode {path}')
    with atomic_output(path) as tmp, open(tmp, 'wb') as f:
        f.write(data.tobytes())


class VideoSink:
    """An mp4v video written to a temporary file, renamed onto ``path`` by ``close()``."""

    def __init__(self, path, fps, size):
        self._atomic = atomic_output(path, suffix=osp.splitext(path)[1] or '.mp4')
        self._tmp = self._atomic.__enter__()
        self._writer = cv2.VideoWriter(self._tmp, cv2.VideoWriter_fourcc(*'mp4v'), fps, size)
        if not self._writer.isOpened():
            self.abort()
            raise DeployError(f'cannot write the video {path} (no mp4v encoder in opencv?)')

    def write(self, frame):
        self._writer.write(frame)

    def close(self):
        self._writer.release()
        self._atomic.__exit__(None, None, None)

    def abort(self):
        """Drop the temporary file; ``path`` is left as it was."""
        self._writer.release()
        error = DeployError('aborted')
        self._atomic.__exit__(DeployError, error, None)  # removes the temporary file


def label_dtype(num_classes):
    """The dtype of label PNGs: uint8 up to 256 classes, else uint16."""
    return np.uint8 if num_classes <= 256 else np.uint16


# ------------------------------------------------------------------------- the CLI
class _Progress:
    """A one-line progress counter on stderr (the runner has no mmengine)."""

    def __init__(self, total, what):
        self.total, self.what, self.done, self.start = total, what, 0, time.time()

    def update(self, n=1):
        self.done += n
        rate = self.done / max(time.time() - self.start, 1e-9)
        total = f'/{self.total}' if self.total else ''
        print(f'\r{self.what}: {self.done}{total} ({rate:.1f}/s)', end='', file=sys.stderr,
              flush=True)

    def finish(self):
        print(file=sys.stderr)


def run(model_path, inputs, out_dir, batch_size=None, frame_labels=False, opacity=0.5,
        threads=None, providers=None) -> list:
    """Predict every input (see the module docstring); return the written paths."""
    items = list_inputs(inputs)
    model = OnnxSegmentor(model_path, batch_size=batch_size, providers=providers,
                          threads=threads)
    dtype = label_dtype(len(model.classes) or 256)
    written = []
    images = [p for kind, p in items if kind == 'image']
    if images:
        progress = _Progress(len(images), 'images')
        for path in images:
            bgr = read_image(path)
            label, _ = model.predict([bgr])[0]
            name = osp.splitext(osp.basename(path))[0]
            for sub, img in (('labels', label.astype(dtype)),
                             ('overlays', blend(bgr, label, model.palette, opacity))):
                target = osp.join(out_dir, sub, f'{name}.png')
                write_png(target, img)
                written.append(target)
            progress.update()
        progress.finish()
    for path in (p for kind, p in items if kind == 'video'):
        written += segment_video(model, path, out_dir, frame_labels, opacity, dtype)
    return written


def segment_video(model, path, out_dir, frame_labels=False, opacity=0.5, dtype=np.uint8):
    """Overlay video (and per-frame label PNGs) of one video; the written paths."""
    name = osp.splitext(osp.basename(path))[0]
    fps, count = video_info(path)
    target = osp.join(out_dir, f'{name}_overlay.mp4')
    sink, written, index = None, [], 0
    progress = _Progress(count, name)
    try:
        for frames in iter_video(path, model.batch_size):
            if sink is None:
                sink = VideoSink(target, fps, (frames[0].shape[1], frames[0].shape[0]))
            for frame, (label, _) in zip(frames, model.predict(frames)):
                sink.write(blend(frame, label, model.palette, opacity))
                if frame_labels:
                    png = osp.join(out_dir, 'labels', name, f'{index:06d}.png')
                    write_png(png, label.astype(dtype))
                    written.append(png)
                index += 1
            progress.update(len(frames))
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    progress.finish()
    if sink is None:
        raise DeployError(f'{path}: no frame could be read')
    sink.close()
    return [target] + written


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Segment images, folders and videos with an exported SoMA model '
                    '(onnxruntime; no torch needed)')
    parser.add_argument('model', help='.onnx file from tools/deploy/export_onnx.py')
    parser.add_argument('inputs', nargs='+', help='images, folders, videos')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--batch-size', type=int, default=None,
                        help='windows/frames per graph call (free-batch models; default the '
                             "config's slide_batch_size, else 8)")
    parser.add_argument('--frame-labels', action='store_true',
                        help='videos: also write a label PNG per frame')
    parser.add_argument('--opacity', type=float, default=0.5, help='overlay colour opacity')
    parser.add_argument('--threads', type=int, default=None, help='onnxruntime threads')
    return parser.parse_args(argv)


def main(argv=None):
    """The CLI; a user error is one ``error: ...`` line on stderr and exit code 1."""
    args = parse_args(argv)
    try:
        paths = run(args.model, args.inputs, args.out, args.batch_size, args.frame_labels,
                    args.opacity, args.threads)
    except (DeployError, OSError) as e:
        print(f'error: {" ".join(str(e).split())}', file=sys.stderr)
        return 1
    print(f'wrote {len(paths)} files to {args.out}')
    return 0
