"""The one adapter interface: what every adapter method offers, whatever it is.

A backbone adapted by SoMA (:mod:`soma.models.adapters.soma_adapter`) or by a ``peft`` tuner
(:mod:`soma.models.adapters.peft_adapter`) is driven through the same small protocol: wrap,
init after the weights are loaded, freeze, report, checkpoint meta, merge and unload, and
the names of its keys. The segmentors, detectors, hooks and checkpoint operations call it
without asking which method it is (:func:`soma.models.peft_backbone.adapter_of` finds it).
"""
import abc
from typing import Callable, Dict, List, Optional

from torch import nn

__all__ = ['BackboneAdapter']


class BackboneAdapter(abc.ABC):
    """One backbone's adapter.

    Attributes:
        meta_key: ``checkpoint['meta'][meta_key]`` holds :meth:`checkpoint_meta`
            (``'soma'`` / ``'peft'``).
        module: what replaces the backbone in the model (SoMA's wrapper, or the backbone
            itself, adapted in place by peft).
        backbone: the backbone inside :attr:`module` (the module that holds the plain keys).
        base_prefix: where the backbone's own keys sit in ``module.state_dict()``
            (``'model.'`` for SoMA's wrapper, ``''`` for peft).
    """

    meta_key: str
    base_prefix: str

    @property
    @abc.abstractmethod
    def module(self) -> nn.Module:
        """The module that replaces the backbone in the model."""

    @property
    @abc.abstractmethod
    def backbone(self) -> nn.Module:
        """The adapted backbone inside :attr:`module`."""

    @abc.abstractmethod
    def adapted_layers(self) -> Dict[str, nn.Module]:
        """The adapted layers, by their name in the backbone (``blocks.8.attn.q``)."""

    @abc.abstractmethod
    def adapter_keys(self) -> List[str]:
        """The keys of ``module.state_dict()`` that belong to the adapters (not the backbone)."""

    @abc.abstractmethod
    def init_after_weights(self) -> int:
        """Run the inits that read the loaded weights (SoMA's SVD, PiSSA, ...); the count."""

    @abc.abstractmethod
    def freeze(self) -> None:
        """Apply the method's trainable/frozen rules to every parameter."""

    @abc.abstractmethod
    def trainable_parameter_report(self) -> dict:
        """Trainable/total counts per block and overall, plus a printable ``table``."""

    @abc.abstractmethod
    def checkpoint_meta(self) -> dict:
        """What ``checkpoint['meta'][meta_key]`` records to rebuild the adapter from a file."""

    def adopt_checkpoint(self, meta: Optional[dict], carries_weights: bool) -> Optional[str]:
        """A checkpoint with this adapter's keys is about to be loaded: take from its ``meta``
        (``meta[meta_key]``, None when absent) what the stored weights mean, or refuse it;
        return a line to log, or None. ``carries_weights``: it holds the adapted layers' own
        weights too (a full checkpoint), not only the adapters."""
        return None

    @abc.abstractmethod
    def merge_in_place(self) -> Callable[[], None]:
        """Fold the adapters into the weights for inference, keeping what it changes; return
        the function that puts the exact weights back (bit for bit)."""

    @abc.abstractmethod
    def merge_and_unload(self) -> nn.Module:
        """The backbone with the adapters folded into plain layers (the adapter is gone)."""

    @abc.abstractmethod
    def unload(self) -> nn.Module:
        """The backbone with the adapters taken off, not merged: plain layers holding only the
        stored base weights (what the backbone computes without the adapters)."""

    def is_adapter_key(self, key: str) -> bool:
        """Whether ``key`` (of ``module.state_dict()``) belongs to the adapters."""
        return key in set(self.adapter_keys())
