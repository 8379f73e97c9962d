"""SoMA (minor-component adaptation; the release's "SoRA") for any ``nn.Module``.

Pure PyTorch: ``config`` (``SoMAConfig`` and the facts it owns), ``svd`` (the fast exact
minor/principal subspace), ``layer`` (``SoMALinear``), ``model`` (``apply_soma``,
``SoMAModel``: name rules, freezing, reports) and ``interop`` (export as a ``peft`` LoRA adapter;
imports ``peft`` only when called).
"""
from .config import (ADAPTER_KEYWORD, ALWAYS_FROZEN_KEYWORDS, DEFAULT_TARGET_MODULES, META_KEY,
                     RANK_RAMP_STARTS, SEMANTICS_RELEASE, SEMANTICS_RESIDUAL,
                     TRAINABLE_TOKEN_KEYWORDS, WRAPPED_MODEL_ATTR, SoMAConfig, SoraConfig)
from .layer import SoMALinear
from .model import (SoMAModel, SoraModel, adapted_layers, apply_soma, block_index,
                    init_pending_adapters, is_target_name)
from .interop import export_peft_adapter, save_peft_adapter, to_lora_config
from .svd import exact_svd_components, minor_components

__all__ = [
    'SoMAConfig', 'SoraConfig', 'SoMALinear', 'SoMAModel', 'SoraModel', 'apply_soma',
    'init_pending_adapters', 'adapted_layers', 'block_index', 'is_target_name',
    'minor_components', 'exact_svd_components', 'DEFAULT_TARGET_MODULES',
    'ALWAYS_FROZEN_KEYWORDS', 'TRAINABLE_TOKEN_KEYWORDS', 'ADAPTER_KEYWORD',
    'WRAPPED_MODEL_ATTR', 'META_KEY', 'SEMANTICS_RESIDUAL', 'SEMANTICS_RELEASE',
    'RANK_RAMP_STARTS', 'export_peft_adapter', 'save_peft_adapter', 'to_lora_config'
]
