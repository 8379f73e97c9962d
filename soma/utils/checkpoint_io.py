"""Reading and writing checkpoint files safely.

torch >= 2.6 loads with ``weights_only=True``; mmengine 0.10 saves a few non-tensor objects
(its ``HistoryBuffer`` in the message hub, numpy arrays, dtypes and scalars). Rather than
switching the safety off, the exact types mmengine writes are allow-listed once, at
``import soma``, with :func:`torch.serialization.add_safe_globals`. Loading never
unpickles anything else, so a checkpoint from an untrusted source cannot run code.

Writers are atomic: data goes to a temporary file in the target folder, which is renamed
onto the target only when writing succeeded, so a crash never leaves a half-written file.
"""
import json
import os
import os.path as osp
import pickle

import numpy as np
import torch
from mmengine.fileio import LocalBackend, register_backend
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner import CheckpointLoader
from numpy.core import multiarray  # numpy 2 keeps this path as an alias of numpy._core
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from soma.utils.atomic import atomic_output

__all__ = [
    'CheckpointError', 'EMA_STATE_DICT', 'allow_mmengine_checkpoint_types',
    'load_checkpoint_file', 'save_checkpoint_file', 'get_state_dict', 'tensor_bytes',
    'AtomicLocalBackend'
]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the fault."""


def _numpy_safe_globals():
    types = [np.ndarray, np.dtype]
    # register each function under both module paths: numpy 1 pickles name
    # numpy.core.multiarray, numpy 2 pickles name numpy._core.multiarray
    for fn in (multiarray._reconstruct, multiarray.scalar):
        for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
            types.append((fn, f'{module}.{fn.__name__}'))
    for name in ('bool_', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16', 'uint32',
                 'uint64', 'float16', 'float32', 'float64', 'complex64', 'complex128'):
        types.append(type(np.dtype(getattr(np, name))))
    return types


def _history_buffer_method(obj, name):
    """Stand-in for ``getattr`` when unpickling: only a HistoryBuffer's statistics methods.

    mmengine pickles ``HistoryBuffer._statistics_methods`` as ``getattr(HistoryBuffer, 'min')``
    and so on; the real ``getattr`` would let a crafted file reach any attribute, so the
    pickle name ``__builtin__.getattr`` is bound to this narrow function instead.
    """
    # the statistics methods: public functions defined on HistoryBuffer itself
    allowed = {k for k, v in vars(HistoryBuffer).items() if callable(v) and not k.startswith('_')}
    owner_ok = obj is HistoryBuffer or isinstance(obj, HistoryBuffer)
    if not owner_ok or not isinstance(name, str) or name not in allowed:
        raise pickle.UnpicklingError(
            f'refusing getattr({type(obj).__name__}, {name!r}) while loading a checkpoint')
    return getattr(obj, name)


def allow_mmengine_checkpoint_types():
    """Allow-list the (data-only) types that mmengine 0.10 puts into checkpoints."""
    torch.serialization.add_safe_globals(
        [HistoryBuffer, (_history_buffer_method, '__builtin__.getattr'),
         (_history_buffer_method, 'builtins.getattr')] + _numpy_safe_globals())


allow_mmengine_checkpoint_types()


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend, writing through :func:`atomic_output`: a checkpoint a
    Runner saves appears complete or not at all, and a full disk is one line that says so."""

    def put(self, obj: bytes, filepath) -> None:
        """Write ``obj`` to ``filepath`` atomically."""
        with atomic_output(filepath, needed_bytes=len(obj)) as tmp, open(tmp, 'wb') as f:
            f.write(obj)

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        """Write the text ``obj`` to ``filepath`` atomically."""
        with atomic_output(filepath) as tmp, open(tmp, 'w', encoding=encoding) as f:
            f.write(obj)


def _load_local_checkpoint(filename, map_location=None):
    """mmengine's loader for local paths: :func:`load_checkpoint_file` (``~`` expanded)."""
    return load_checkpoint_file(osp.expanduser(os.fspath(filename)), map_location)


# mmengine's own registries: every local save and load of a Runner goes through the above
register_backend('local', AtomicLocalBackend, force=True, prefixes='')
CheckpointLoader.register_scheme(prefixes='', loader=_load_local_checkpoint, force=True)


# mmengine's EMAHook copy of the model; safetensors has no nesting, so it is stored flat
EMA_STATE_DICT = 'ema_state_dict'
_FLAT_EMA = EMA_STATE_DICT + '.'


def load_checkpoint_file(path, map_location='cpu'):
    """Load a ``.pth``/``.bin`` (weights-only unpickling) or ``.safetensors`` file.

    Returns the stored dict. A safetensors file gives ``{'state_dict': tensors, 'meta':
    metadata}`` with the metadata decoded from json (and ``ema_state_dict`` when it holds
    one, see :func:`save_checkpoint_file`). Raises :class:`CheckpointError` or
    :class:`FileNotFoundError` with a one-line message naming the file: a well-formed file
    holding a non-allow-listed object is refused as "not plain data"; a file that cannot be
    parsed (truncated, random bytes, a zip with a broken member) is reported as corrupt.
    """
    path = os.fspath(path)
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {path}')
    if not os.access(path, os.R_OK):
        raise CheckpointError(f'checkpoint is not readable: {path}')
    if path.endswith('.safetensors'):
        return _load_safetensors(path, map_location)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        forbidden = _forbidden_object(e)
        if forbidden is None:
            raise CheckpointError(_corrupt_message(path, _unpickler_error(e))) from None
        raise CheckpointError(
            f'{path}: refusing to load, it holds objects that are not plain data '
            f'({forbidden})') from None
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001  (a data-only load fails only on a bad file)
        raise CheckpointError(_corrupt_message(path, e)) from None
    if not isinstance(obj, dict):
        raise CheckpointError(
            f'{path}: expected a dict (a state dict or a checkpoint), got {type(obj).__name__}')
    return obj


# what the weights-only unpickler says about a well-formed file holding a forbidden object
# (torch.serialization, torch._weights_only_unpickler); our own getattr guard says 'refusing'
_FORBIDDEN_OBJECT_MESSAGES = (
    'Unsupported global', 'is blocked', 'must be imported to load', 'Can only create new object',
    'Trying to call reduce', 'Can only build', 'Only persistent_load of storage', 'refusing')


def _unpickler_error(error):
    """The unpickler's own error: torch re-raises it wrapped in a long help text."""
    inner = error.__context__
    return inner if isinstance(inner, pickle.UnpicklingError) else error


def _forbidden_object(error):
    """The line naming the forbidden object, or None when the pickle itself is broken."""
    for line in str(_unpickler_error(error)).strip().splitlines():
        if any(m in line for m in _FORBIDDEN_OBJECT_MESSAGES):
            return line.strip()
    return None


def _corrupt_message(path, error):
    """One line: the file is truncated/corrupt (a cut .pth, random bytes, a broken member)."""
    lines = str(error).strip().splitlines()
    reason = f'{type(error).__name__}: {lines[0].strip()}' if lines else type(error).__name__
    return f'{path}: corrupt or truncated checkpoint file, it cannot be read ({reason})'


def _load_safetensors(path, map_location):
    device = 'cpu' if map_location is None or callable(map_location) else str(map_location)
    try:
        with safe_open(path, framework='pt', device=device) as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f'{path}: corrupt or truncated safetensors file, it cannot be '
                              f'read ({reason})') from None
    meta = {}
    for key, value in metadata.items():
        try:
            meta[key] = json.loads(value)
        except (TypeError, ValueError):
            meta[key] = value
    ckpt = {'state_dict': {k: v for k, v in tensors.items() if not k.startswith(_FLAT_EMA)},
            'meta': meta}
    ema = {k[len(_FLAT_EMA):]: v for k, v in tensors.items() if k.startswith(_FLAT_EMA)}
    if ema:  # stored flat by _save_safetensors: the same dict as from a .pth comes back
        ckpt[EMA_STATE_DICT] = ema
    return ckpt


def tensor_bytes(obj) -> int:
    """The bytes of the tensors inside ``obj`` (dicts, lists): what a checkpoint of it needs
    on the disk, near enough."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def save_checkpoint_file(obj, path) -> None:
    """Save atomically: torch format, or safetensors when ``path`` ends with it.

    For safetensors, the tensors of ``obj['state_dict']`` (or of ``obj`` itself when it is
    a flat dict of tensors) are stored, and ``obj['meta']`` as json metadata; other
    entries (e.g. ``ema_state_dict``) are stored with an ``ema_state_dict.`` key prefix.
    A full disk is a one-line :class:`~soma.utils.atomic.DiskFullError`, nothing written.
    """
    path = os.fspath(path)
    with atomic_output(path, needed_bytes=tensor_bytes(obj)) as tmp:
        if path.endswith('.safetensors'):
            _save_safetensors(obj, tmp)
        else:
            torch.save(obj, tmp)


def _save_safetensors(obj, tmp):
    tensors = {}
    for key, value in get_state_dict(obj).items():
        tensors[key] = value.detach().contiguous()
    for key, value in (obj.get(EMA_STATE_DICT) or {}).items():
        if torch.is_tensor(value):
            tensors[f'{_FLAT_EMA}{key}'] = value.detach().contiguous()
    meta = obj.get('meta') or {}
    save_file(tensors, tmp, metadata={str(k): json.dumps(v) for k, v in meta.items()})


def get_state_dict(ckpt):
    """The model state dict inside a checkpoint dict (``state_dict`` key, or the dict itself)."""
    if isinstance(ckpt, dict) and isinstance(ckpt.get('state_dict'), dict):
        return ckpt['state_dict']
    if isinstance(ckpt, dict) and isinstance(ckpt.get('model'), dict):
        return ckpt['model']
    return ckpt
