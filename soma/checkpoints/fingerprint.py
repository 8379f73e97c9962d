"""Which backbone an adapter was trained on: a fingerprint of the weights no method trains.

An adapter checkpoint only means something on the backbone it was trained on: merged with
another converted backbone of the same shapes, it gives another model, silently. Extract
records :func:`backbone_fingerprint` of the trained model's backbone in the adapter's meta
(``meta['soma']`` or ``meta['peft']``, key ``backbone_fingerprint``); merge,
``tools/test.py --backbone`` and ``LoadBackboneHook`` compute it on the converted backbone
they are given and refuse another one in one line (:func:`check_backbone_fingerprint`).

The fingerprint hashes the tensors that SoMA and peft always leave frozen
(:data:`soma.peft.config.ALWAYS_FROZEN_KEYWORDS`: patch embedding, norms, layer scales), so
training never changes it; the position embedding is left out (it is converted for each input
resolution: the same backbone at another size is not another backbone). Values are rounded
to bfloat16 first: a model trained in bf16 on a float32 folder has the same fingerprint as
that folder. Released checkpoints record none; for them nothing can be checked (logged).
"""
import hashlib
import logging
from typing import Dict, Optional

import torch
from mmengine.logging import print_log

from soma.peft.config import ALWAYS_FROZEN_KEYWORDS
from soma.utils.checkpoint_io import CheckpointError, get_state_dict

from .backbone import backbone_part
from .layout import SOMA, CheckpointLike, adapter_method, checkpoint_meta, file_name

__all__ = ['FINGERPRINT_KEY', 'backbone_fingerprint', 'recorded_fingerprint',
           'record_fingerprint', 'check_backbone_fingerprint']

FINGERPRINT_KEY = 'backbone_fingerprint'
# frozen, but converted per input resolution: the same backbone at another size is no other
RESOLUTION_KEYWORDS = ('pos_embed', 'position_embedding')


def backbone_fingerprint(backbone: Dict[str, torch.Tensor]) -> Optional[str]:
    """A short hex digest of a backbone's always-frozen tensors (plain backbone keys, e.g.
    ``patch_embed.proj.weight``); None when it has none of them."""
    keys = sorted(k for k, v in backbone.items()
                  if torch.is_tensor(v) and v.is_floating_point()
                  and any(word in k for word in ALWAYS_FROZEN_KEYWORDS)
                  and not any(word in k for word in RESOLUTION_KEYWORDS))
    if not keys:
        return None
    digest = hashlib.sha256()
    for key in keys:
        value = backbone[key].detach().to('cpu', torch.bfloat16).contiguous()
        digest.update(f'{key}:{tuple(value.shape)};'.encode())
        digest.update(value.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:16]


def recorded_fingerprint(ckpt: dict) -> Optional[str]:
    """The backbone fingerprint of a checkpoint: the one its meta records (an extracted
    adapter), else that of its own backbone part (a full model checkpoint); None for a
    released adapter checkpoint."""
    method = adapter_method(ckpt)
    recorded = (checkpoint_meta(ckpt).get(method) or {}).get(FINGERPRINT_KEY)
    return recorded or backbone_fingerprint(backbone_part(get_state_dict(ckpt)))


def record_fingerprint(adapter_ckpt: dict, backbone: Dict[str, torch.Tensor]) -> dict:
    """``adapter_ckpt`` with the fingerprint of ``backbone`` (the trained model's own backbone
    part) in its method's meta; returned for chaining."""
    fingerprint = backbone_fingerprint(backbone)
    if fingerprint is not None:
        method = adapter_method(adapter_ckpt)
        adapter_ckpt.setdefault('meta', {}).setdefault(method, {})[FINGERPRINT_KEY] = \
            fingerprint
    return adapter_ckpt


def check_backbone_fingerprint(adapter_ckpt: dict, backbone: Dict[str, torch.Tensor],
                               backbone_source: CheckpointLike, adapter_source: CheckpointLike,
                               check: bool = True) -> None:
    """Refuse (one line) a converted backbone whose fingerprint is not the adapter's
    (:func:`recorded_fingerprint`); ``check=False`` (``--ignore-fingerprint``) skips it. An
    adapter that records none (the release's) cannot be checked: logged."""
    recorded = recorded_fingerprint(adapter_ckpt)
    adapter_name = file_name(adapter_source, 'the adapter checkpoint')
    if recorded is None:
        if check and adapter_method(adapter_ckpt) == SOMA:
            print_log(f'{adapter_name} records no backbone fingerprint (a released '
                      f'checkpoint?): the backbone it is merged with cannot be checked',
                      logger='current', level=logging.INFO)
        return
    if not check:
        return
    found = backbone_fingerprint(backbone)
    if found != recorded:
        raise CheckpointError(
            f'{adapter_name} was trained on another backbone than '
            f'{file_name(backbone_source, "the given backbone")} (fingerprint {recorded} '
            f'recorded, {found} found, over the weights training never changes); pass the '
            f'backbone it was trained on, or --ignore-fingerprint to merge anyway')
