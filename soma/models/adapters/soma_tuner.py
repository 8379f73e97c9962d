"""SoMA (:mod:`soma.peft`) behind the adapter interface.

The backbone is wrapped by :class:`~soma.peft.SoMAModel` (keys ``backbone.model.*``); the
wrapper already owns the operations (SVD init, freezing rules, report, checkpoint meta,
merge and unload), this class only gives them the interface's names and adds what the
interface asks beyond them: the adapter key names, adopting a loaded checkpoint's
semantics, and the bit-exact merge for evaluation.
"""
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from soma.peft import SoMAConfig, SoMALinear, SoMAModel
from soma.peft.config import (META_KEY, SEMANTICS_RELEASE, WRAPPED_MODEL_ATTR)
from soma.peft.layer import LORA_A, LORA_B
from soma.utils.checkpoint_io import CheckpointError

from .base import BackboneAdapter

__all__ = ['SoMATuner']


class SoMATuner(BackboneAdapter):
    """The SoMA adapter of one backbone: a view of its :class:`SoMAModel` wrapper."""

    meta_key = META_KEY
    base_prefix = f'{WRAPPED_MODEL_ATTR}.'

    def __init__(self, soma_model: SoMAModel):
        self.soma_model = soma_model

    @classmethod
    def wrap(cls, backbone: nn.Module, lora_cfg: dict) -> 'SoMATuner':
        """Wrap ``backbone`` with SoMA adapters of ``lora_cfg``; the SVD runs now only with
        ``svd_init_on='construction'`` (the release's order), else in
        :meth:`init_after_weights`."""
        config = SoMAConfig.from_dict(lora_cfg)
        return cls(SoMAModel(config, backbone,
                             init_adapters=config.svd_init_on == 'construction'))

    @property
    def module(self) -> nn.Module:
        return self.soma_model

    @property
    def backbone(self) -> nn.Module:
        return getattr(self.soma_model, WRAPPED_MODEL_ATTR)

    def adapted_layers(self) -> Dict[str, nn.Module]:
        return self.soma_model.adapted_layers()

    def adapter_keys(self) -> List[str]:
        return [f'{self.base_prefix}{name}.{factor}.weight'
                for name in self.adapted_layers() for factor in (LORA_A, LORA_B)]

    def init_after_weights(self) -> int:
        return self.soma_model.init_adapters()

    def freeze(self) -> None:
        self.soma_model.freeze()

    def trainable_parameter_report(self) -> dict:
        return self.soma_model.trainable_parameter_report()

    def checkpoint_meta(self) -> dict:
        return self.soma_model.checkpoint_meta()

    def adopt_checkpoint(self, meta: Optional[dict], carries_weights: bool) -> Optional[str]:
        """A full checkpoint (adapted weights included) gives the model its semantics: what
        the weights it writes later mean ('release' when fine-tuning from a merged released
        model). An adapter-only checkpoint of other semantics than the model's weights would
        be computed on the wrong base: refused."""
        semantics = (meta or {}).get('semantics', SEMANTICS_RELEASE)
        if carries_weights:
            self.soma_model.semantics = semantics
            return (f'the loaded checkpoint carries adapted weights of {semantics!r} '
                    f'semantics; the checkpoints written say so')
        current = self.soma_model.semantics
        if semantics != current:
            raise CheckpointError(
                f'the loaded checkpoint holds adapters of {semantics!r} semantics but no '
                f'backbone weights, while the model\'s weights are of {current!r} semantics: '
                f'merge it with the converted backbone first (tools/merge_soma_weights.py) or '
                f"add dict(type='LoadBackboneHook', checkpoint_path=CONVERTED) to custom_hooks")
        return None

    def merge_in_place(self) -> Callable[[], None]:
        """Merge every unmerged :class:`SoMALinear` (one matmul at inference); the undo copies
        the residual weights back (unmerging by subtraction would round)."""
        layers = [m for m in self.adapted_layers().values()
                  if isinstance(m, SoMALinear) and not m.merged]
        saved = []
        with torch.no_grad():
            for layer in layers:
                saved.append((layer, layer.weight.detach().clone()))
                layer.merge()

        def restore() -> None:
            with torch.no_grad():
                for layer, weight in saved:
                    layer.weight.copy_(weight)
                    layer.merged = False
        return restore

    def merge_and_unload(self) -> nn.Module:
        return self.soma_model.merge_and_unload()

    def unload(self) -> nn.Module:
        return self.soma_model.unload()
