"""Everything about checkpoints: their key layout, the converted backbone, the SoMA and
``peft`` adapter operations (extract / merge / fold), the peft-folder export, the release's
Co-DETR names and the model-vs-checkpoint check.

One module per concept, imports flowing down this list::

    operations     the public operations: read the inputs once, pick the method once
    peft_export    SoMA adapters as a standard peft LoRA folder (rank 2r), and back
    soma_adapter   SoMA's extract / merge / fold    | siblings: the same operations,
    peft_adapter   peft's extract / merge / fold    | neither hands work to the other
    model_check    can this state dict load into this model? (one line if not)
    backbone       the one reader of a converted backbone; loading it into a model
    skeleton       the adapted linears alone, for the methods to compute on
    layout         prefixes, adapter key names, meta, reading a file into our layout
    legacy_codetr  the release's Co-DETR key names -> ours

File I/O (weights-only loading, atomic writes) is :mod:`soma.utils.checkpoint_io`'s.
"""
from soma.utils.checkpoint_io import CheckpointError

from .backbone import hf_folder_of, load_backbone_weights, read_converted_backbone
from .layout import (adapter_method, checkpoint_semantics, copied_meta,
                     load_soma_checkpoint_file, peft_meta_of)
from .legacy_codetr import rename_legacy_codetr_checkpoint, rename_legacy_codetr_keys
from .model_check import check_checkpoint_for_model
from .operations import (adapter_contents, complete_checkpoint, extract_file,
                         extract_soma_dgod_weights, extract_soma_weights, fold_adapters,
                         generate_full_weights, load_soma_checkpoint, merge_file,
                         merge_soma_weights, prepare_checkpoint)
from .peft_export import (extract_peft_dir, merge_peft_file, merge_soma_weights_with_peft,
                          soma_delta_model)
from .soma_adapter import is_adapter_key, release_adapter_config

__all__ = [
    'CheckpointError', 'load_soma_checkpoint_file', 'checkpoint_semantics', 'peft_meta_of',
    'adapter_method', 'copied_meta', 'read_converted_backbone', 'hf_folder_of',
    'load_backbone_weights', 'rename_legacy_codetr_keys', 'rename_legacy_codetr_checkpoint',
    'check_checkpoint_for_model', 'extract_soma_weights', 'extract_soma_dgod_weights',
    'merge_soma_weights', 'fold_adapters', 'generate_full_weights', 'extract_file',
    'merge_file', 'prepare_checkpoint', 'load_soma_checkpoint', 'adapter_contents',
    'complete_checkpoint', 'extract_peft_dir', 'merge_soma_weights_with_peft',
    'merge_peft_file', 'soma_delta_model', 'is_adapter_key', 'release_adapter_config'
]
