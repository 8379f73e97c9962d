"""Key names of the release's Co-DETR checkpoints -> this project's (mmdet 3.x) names.

The release builds Co-DINO from legacy mmcv ``BaseTransformerLayer`` modules, so its
detector checkpoints (``soma_dinov2-L_dgod_best.pth``, adapter-only DGOD files, full
checkpoints) name the transformer's parameters differently from
:mod:`soma.models.detectors.co_dino_transformer`. Nine rules, all inside
``query_head.transformer.`` (``module.`` EMA keys too), map one layout to the other; every
other key (backbone, neck, RPN, RoI and ATSS heads) is the same in both:

====================================================  ===========================================
release                                                this project
====================================================  ===========================================
``level_embeds``                                      ``level_embed``
``enc_output.*``                                      ``memory_trans_fc.*``
``enc_output_norm.*``                                 ``memory_trans_norm.*``
``query_embed.*``                                     ``query_embedding.*``
``encoder.layers.<i>.attentions.0.*``                 ``encoder.layers.<i>.self_attn.*``
``decoder.layers.<i>.attentions.0.*``                 ``decoder.layers.<i>.self_attn.*``
``decoder.layers.<i>.attentions.1.*``                 ``decoder.layers.<i>.cross_attn.*``
``{encoder,decoder}.layers.<i>.ffns.0.*``             ``{encoder,decoder}.layers.<i>.ffn.*``
``decoder.ref_point_head.0.*`` / ``.2.*``             ``decoder.ref_point_head.layers.0/1.*``
====================================================  ===========================================

None of the release names occurs in this project's layout, so renaming is a no-op on our own
checkpoints and on segmentors. :func:`soma.checkpoints.layout.load_soma_checkpoint_file`
applies it to every checkpoint it reads, so every tool and API sees (and writes) our names;
``LegacyKeysHook`` applies it to what the runner loads.
"""
import re
from typing import Dict, Tuple

from mmengine.logging import print_log

from soma.utils.checkpoint_io import EMA_STATE_DICT, CheckpointError

__all__ = ['LEGACY_CODETR_RULES', 'rename_legacy_codetr_keys', 'rename_legacy_codetr_checkpoint']

TRANSFORMER = 'query_head.transformer.'

# (release pattern, our replacement) on the part of a key after 'query_head.transformer.'
LEGACY_CODETR_RULES = (
    (r'level_embeds$', 'level_embed'),
    (r'enc_output\.', 'memory_trans_fc.'),
    (r'enc_output_norm\.', 'memory_trans_norm.'),
    (r'query_embed\.', 'query_embedding.'),
    (r'encoder\.layers\.(\d+)\.attentions\.0\.', r'encoder.layers.\1.self_attn.'),
    (r'decoder\.layers\.(\d+)\.attentions\.0\.', r'decoder.layers.\1.self_attn.'),
    (r'decoder\.layers\.(\d+)\.attentions\.1\.', r'decoder.layers.\1.cross_attn.'),
    (r'(encoder|decoder)\.layers\.(\d+)\.ffns\.0\.', r'\1.layers.\2.ffn.'),
    (r'decoder\.ref_point_head\.([02])\.', lambda m: f'decoder.ref_point_head.layers.'
                                                     f'{int(m.group(1)) // 2}.'),
)
_RULES = tuple((re.compile(pattern), repl) for pattern, repl in LEGACY_CODETR_RULES)


def _rename(key):
    at = key.find(TRANSFORMER)
    if at < 0 or (at > 0 and key[at - 1] != '.'):
        return key
    head, rest = key[:at + len(TRANSFORMER)], key[at + len(TRANSFORMER):]
    for pattern, repl in _RULES:
        new, n = pattern.subn(repl, rest, count=1) if pattern.match(rest) else (rest, 0)
        if n:
            return head + new
    return key


def rename_legacy_codetr_keys(state_dict: Dict) -> Tuple[Dict, int]:
    """``(new_state_dict, n_renamed)``: release Co-DETR key names replaced by ours.

    Order and values are kept; the input is not modified (returned as is when nothing is
    renamed). A key whose new name is already present (a mixed layout) is an error.
    """
    renamed = {key: _rename(key) for key in state_dict}
    n = sum(key != new for key, new in renamed.items())
    if not n:
        return state_dict, 0
    out = {}
    for key, value in state_dict.items():
        new = renamed[key]
        if new in out or (new != key and new in state_dict):
            raise CheckpointError(f'the checkpoint has both {key} (release Co-DETR layout) '
                                  f'and {new}; cannot rename it')
        out[new] = value
    return out, n


def rename_legacy_codetr_checkpoint(ckpt: dict, name: str = 'checkpoint') -> dict:
    """A checkpoint dict with :func:`rename_legacy_codetr_keys` applied to its state dict
    (``state_dict``, ``model`` or the flat dict itself) and its ``ema_state_dict``.

    Logs one line (``renamed N legacy Co-DETR keys (release layout) in NAME``) when it
    renamed anything; otherwise returns ``ckpt`` itself.
    """
    if not isinstance(ckpt, dict):
        return ckpt
    holder = next((k for k in ('state_dict', 'model') if isinstance(ckpt.get(k), dict)), None)
    if holder is None:
        out, total = rename_legacy_codetr_keys(ckpt)
    else:
        out = dict(ckpt)
        out[holder], total = rename_legacy_codetr_keys(ckpt[holder])
        if isinstance(ckpt.get(EMA_STATE_DICT), dict):
            out[EMA_STATE_DICT], n = rename_legacy_codetr_keys(ckpt[EMA_STATE_DICT])
            total += n
    if not total:
        return ckpt
    print_log(f'renamed {total} legacy Co-DETR keys (release layout) in {name}',
              logger='current')
    return out
