"""``SoMALinear``: a linear layer split into a frozen residual and a trainable minor part.

``y = x W^T + b + s * (dropout(x) A^T) B^T`` with ``s = lora_alpha / r``. At initialisation
(the SVD ``W = U S Vh`` of the current weight, r smallest or largest triplets):
``A = diag(sqrt(S_r/s)) Vh_r`` (r x in), ``B = U_r diag(sqrt(S_r/s))`` (out x r) and the
stored weight becomes ``W_res = W - s * B @ A``, so the layer computes what it computed before.

When the SVD runs (the contract):

* ``init_adapter()``: on the current weight, once; later calls do nothing.
* loading a state dict (``load_state_dict``, mmengine ``load_checkpoint``):
  - with ``<prefix>lora_A.weight`` / ``lora_B.weight`` present: no SVD, the layer counts as
    initialised (its weight is taken as stored, i.e. W_res for this project's checkpoints);
  - with only a plain ``weight`` (a converted backbone): the SVD runs on the freshly loaded
    weight right away (``svd_init_on='pretrained'``), and the computed adapters are put into
    the state dict being loaded so that no key is reported missing;
  - ``svd_init_on='construction'`` (the original release): the weight is simply overwritten
    and the adapters are left as they were (the release's defect, SPEC 3).

``state_dict()`` always holds the unmerged weight (W_res), even while merged.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import RANDOM_SEED, is_random_init, parse_init
from .svd import components64, random_components

__all__ = ['SoMALinear', 'LORA_A', 'LORA_B', 'adapter_dtype_for']

# the names of a SoMALinear's two factors: state-dict keys <layer>.lora_A.weight (r x in)
# and <layer>.lora_B.weight (out x r); every checkpoint key rule builds on these
LORA_A = 'lora_A'
LORA_B = 'lora_B'


def adapter_dtype_for(weight_dtype: torch.dtype) -> torch.dtype:
    """The adapters' dtype: float32 beside half-precision (bf16/fp16) frozen weights.

    Trained low-rank factors in bfloat16 lose most small AdamW updates to rounding; kept in
    float32 they train as in a float32 model while the frozen weight stays small (the
    adapter branch casts its input to float32 and its output back).
    """
    return torch.float32 if weight_dtype in (torch.bfloat16, torch.float16) else weight_dtype


class SoMALinear(nn.Linear):
    """``nn.Linear`` with a minor-component adapter; children ``lora_A``, ``lora_B``.

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        r: adapter rank (1..min(in, out)).
        lora_alpha: scale numerator, ``s = lora_alpha / r``.
        lora_dropout: dropout probability on the adapter input.
        first_eigen: largest instead of smallest singular triplets.
        lora_weight_init: 'sora' | 'soma' (exact) | 'sora_niter_<N>' | 'soma_niter_<N>' |
            'sora_random' | 'soma_random' (r triplets at random indices, seed ``RANDOM_SEED``).
        merge_weights: ``eval()`` merges, ``train()`` unmerges.
        svd_init_on: 'pretrained' | 'construction' (see the module docstring).
        name: the module name, used in error messages.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, r: int = 16,
                 lora_alpha: float = 16, lora_dropout: float = 0.0, first_eigen: bool = False,
                 lora_weight_init: str = 'sora', merge_weights: bool = False,
                 svd_init_on: str = 'pretrained', name: str = '', device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        where = f'{name or "SoMALinear"} (weight {out_features}x{in_features})'
        max_rank = min(in_features, out_features)
        if isinstance(r, bool) or not isinstance(r, int) or not 0 < r <= max_rank:
            raise ValueError(f'{where}: rank {r!r} must be in 1..{max_rank}')
        if not self.weight.is_floating_point():
            raise TypeError(f'{where}: weight dtype {self.weight.dtype} is not floating point')
        self.r = r
        self.lora_alpha = lora_alpha
        self.scaling = lora_alpha / r
        self.first_eigen = first_eigen
        self.lora_weight_init = lora_weight_init
        self.niter = parse_init(lora_weight_init)
        self.random_components = is_random_init(lora_weight_init)
        self.merge_weights = merge_weights
        self.svd_init_on = svd_init_on
        self.layer_name = name
        self.lora_dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        adapter_dtype = adapter_dtype_for(self.weight.dtype)
        self.lora_A = nn.Linear(in_features, r, bias=False, device=device, dtype=adapter_dtype)
        self.lora_B = nn.Linear(r, out_features, bias=False, device=device, dtype=adapter_dtype)
        nn.init.zeros_(self.lora_A.weight)  # no contribution until initialised
        nn.init.zeros_(self.lora_B.weight)
        self.weight.requires_grad = False
        self.merged = False
        self.lora_initialized = False

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs) -> 'SoMALinear':
        """A ``SoMALinear`` sharing ``linear``'s weight and bias (not yet initialised)."""
        weight = linear.weight
        name = kwargs.get('name', '')
        if not weight.is_floating_point():
            raise TypeError(f'{name or type(linear).__name__}: weight dtype {weight.dtype} is not '
                            f'floating point; SoMA needs a float weight')
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                  device='meta', dtype=weight.dtype, **kwargs)
        new.weight = linear.weight
        new.weight.requires_grad = False
        if linear.bias is not None:
            new.bias = linear.bias
        adapter_dtype = adapter_dtype_for(weight.dtype)
        new.lora_A = nn.Linear(linear.in_features, new.r, bias=False, device=weight.device,
                               dtype=adapter_dtype)
        new.lora_B = nn.Linear(new.r, linear.out_features, bias=False, device=weight.device,
                               dtype=adapter_dtype)
        if weight.device.type != 'meta':
            nn.init.zeros_(new.lora_A.weight)
            nn.init.zeros_(new.lora_B.weight)
        new.training = linear.training  # (no train() call: it would merge a zero delta)
        for child in new.children():
            child.train(linear.training)
        return new

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, r={self.r}, scaling={self.scaling:g}, '
                f'first_eigen={self.first_eigen}, init={self.lora_weight_init!r}, '
                f'initialized={self.lora_initialized}, merged={self.merged}')

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def init_adapter(self, generator: Optional[torch.Generator] = None) -> bool:
        """Run the SVD on the current weight; no-op (returns False) when already done."""
        if self.lora_initialized:
            return False
        if self.merged:
            self.unmerge()
        weight = self.weight
        if weight.device.type == 'meta':
            raise ValueError(f'{self._where()}: cannot initialise a weight on the meta device')
        if self.random_components:
            u, s, vh = random_components(weight, self.r, RANDOM_SEED)
        else:
            u, s, vh = components64(weight, self.r, self.first_eigen, self.niter, generator)
        root = torch.sqrt(s.clamp_min(0) / self.scaling)
        lora_a = (root[:, None] * vh).to(self.lora_A.weight.dtype)
        lora_b = (u * root).to(self.lora_B.weight.dtype)
        # W_res = W - s*B@A from the adapters as stored (one fused op, float32 or wider), so
        # W_res + s*B@A == W up to one rounding
        if weight.dtype in (torch.float32, torch.float64) and lora_a.dtype == weight.dtype:
            weight.addmm_(lora_b, lora_a, alpha=-self.scaling)
        else:
            weight.copy_(torch.addmm(weight.float(), lora_b.float(), lora_a.float(),
                                     alpha=-self.scaling))
        self.lora_A.weight.copy_(lora_a)
        self.lora_B.weight.copy_(lora_b)
        self.lora_initialized = True
        return True

    def _where(self) -> str:
        return f'{self.layer_name or "SoMALinear"} (weight {self.out_features}x{self.in_features})'

    # ------------------------------------------------------------------ merging
    def _delta(self) -> torch.Tensor:
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Add ``s * B @ A`` into the weight (forward then needs one matmul)."""
        if not self.merged:
            self.weight.add_(self._delta().to(self.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take ``s * B @ A`` out of the weight again."""
        if self.merged:
            self.weight.sub_(self._delta().to(self.weight.dtype))
            self.merged = False

    def train(self, mode: bool = True):
        super().train(mode)
        if self.merge_weights:
            if mode:
                self.unmerge()
            else:
                self.merge()
        return self

    @torch.no_grad()
    def to_linear(self, with_adapter: bool = True) -> nn.Linear:
        """A plain ``nn.Linear`` computing the same function (weight ``W_res + s*B@A``); with
        ``with_adapter=False`` the stored weight alone (``W_res``: the adapter dropped)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        weight = self.weight
        if self.merged != with_adapter:  # add the delta, or take it out again
            delta = self._delta().to(weight.dtype)
            weight = weight + delta if with_adapter else weight - delta
        linear.weight.copy_(weight)
        if self.bias is not None:
            linear.bias.copy_(self.bias)
            linear.bias.requires_grad = self.bias.requires_grad
        linear.train(self.training)
        return linear

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = F.linear(x, self.weight, self.bias)
        if self.merged:
            return result
        a, b = self.lora_A.weight, self.lora_B.weight
        lora = F.linear(F.linear(self.lora_dropout(x).to(a.dtype), a), b)
        return result + (lora * self.scaling).to(result.dtype)

    # ------------------------------------------------------------------ state dict
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.merged:  # export the unmerged weight: checkpoints never double count
            weight = self.weight - self._delta().to(self.weight.dtype)
            destination[prefix + 'weight'] = weight if keep_vars else weight.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        if self.merged:
            self.unmerge()
        has_lora = any(f'{prefix}{name}.weight' in state_dict for name in (LORA_A, LORA_B))
        has_weight = prefix + 'weight' in state_dict
        n_errors = len(error_msgs)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if len(error_msgs) > n_errors:
            return
        if has_lora:
            self.lora_initialized = True  # the children load the adapters right after this
        elif has_weight and self.svd_init_on == 'pretrained':
            self.lora_initialized = False
            self.init_adapter()
            # hand the fresh adapters to the children's loading (no "missing key" reports)
            state_dict[f'{prefix}{LORA_A}.weight'] = self.lora_A.weight.detach()
            state_dict[f'{prefix}{LORA_B}.weight'] = self.lora_B.weight.detach()
