"""SoMA adapter configuration (``lora_cfg`` in the configs) and the facts it owns.

Field names and defaults are those of the original release (its ``SoraConfig``), so the
release's config dicts load unchanged; ``svd_init_on`` and ``layers_pattern`` are this
project's additions.

``enable_lora`` (a field of the release's config that the release never reads) is accepted and
ignored, with a warning, so the release's configs keep loading; it is not stored.

``fan_in_fan_out`` is accepted for compatibility; ``True`` means a layer stores its weight as
(in, out) (GPT-2 ``Conv1D``). There is no transposed-weight layer here, so ``True`` is an error
as soon as it meets an ``nn.Linear`` target (see :func:`soma.peft.model.apply_soma`).
"""
import re
import warnings
from dataclasses import InitVar, asdict, dataclass, field, fields
from typing import List, Optional, Union

__all__ = [
    'SoMAConfig', 'SoraConfig', 'DEFAULT_TARGET_MODULES', 'ALWAYS_FROZEN_KEYWORDS',
    'TRAINABLE_TOKEN_KEYWORDS', 'ADAPTER_KEYWORD', 'WRAPPED_MODEL_ATTR', 'META_KEY',
    'SEMANTICS_RESIDUAL', 'SEMANTICS_RELEASE', 'RANK_RAMP_STARTS', 'DEFAULT_START_LORA_IDX',
    'DEFAULT_LAYERS_PATTERN', 'parse_init',
    'is_random_init', 'RANDOM_SEED'
]

# --- facts owned by this module (everyone else imports them from here) ---
DEFAULT_TARGET_MODULES = ('q', 'k', 'v', 'proj', 'fc1', 'fc2')
# always frozen, re-applied at every train() call (substring of the parameter name); the
# transformers spellings too: norm1/norm2 also match Siglip's layer_norm1/2, patch_embed
# matches patch_embeddings/patch_embedding, layer_scale (ls1/ls2), position_embedding(s)
ALWAYS_FROZEN_KEYWORDS = ('norm1', 'norm2', 'ls1', 'ls2', 'pos_embed', 'patch_embed',
                          'layer_scale', 'position_embedding')
# trained besides the adapters and the target biases (substring of the parameter name)
TRAINABLE_TOKEN_KEYWORDS = ('mask_token',)
ADAPTER_KEYWORD = 'lora'  # every adapter parameter name contains it
WRAPPED_MODEL_ATTR = 'model'  # SoMAModel holds the backbone as .model -> keys backbone.model.*
META_KEY = 'soma'  # checkpoint['meta'][META_KEY] = SoMAModel.checkpoint_meta()
SEMANTICS_RESIDUAL = 'residual'  # stored weight = W_res = W - s*B@A (this project)
SEMANTICS_RELEASE = 'release'  # stored weight = W_pretrained, plus B@A (original release)
# rank_ramp: rank r below 12, 2r from 12, 4r from 16, 8r from 20
RANK_RAMP_STARTS = (12, 16, 20)
# the release's first adapted block (blocks 0..7 of DINOv2-L stay frozen)
DEFAULT_START_LORA_IDX = 8
# the release's block container: DINOv2's ``blocks.<i>.`` (a backbone names its own, e.g.
# DinoVisionTransformer.layers_pattern; this is the default of a lora_cfg that names none)
DEFAULT_LAYERS_PATTERN = 'blocks'

_TYPES = ('sora', 'soma')
_BIAS_MODES = ('all', 'lora_only', 'none')
_SVD_INIT_ON = ('pretrained', 'construction')
_INIT_RE = re.compile(r'(?:sora|soma)(?:_niter_(\d+)|_(random))?')
# seed of the random component choice of 'sora_random' / 'soma_random' (per layer)
RANDOM_SEED = 0


def parse_init(lora_weight_init: str) -> Optional[int]:
    """``'sora'``/``'soma'`` -> None (exact); ``'sora_niter_<N>'``/``'soma_niter_<N>'`` -> N;
    ``'sora_random'``/``'soma_random'`` (random components, exact SVD) -> None."""
    match = _INIT_RE.fullmatch(str(lora_weight_init))
    if match is None:
        raise ValueError(
            f"lora_weight_init must be 'sora', 'soma', 'sora_niter_<N>', 'soma_niter_<N>', "
            f"'sora_random' or 'soma_random', got {lora_weight_init!r}")
    return None if match.group(1) is None else int(match.group(1))


def is_random_init(lora_weight_init: str) -> bool:
    """True for 'sora_random' / 'soma_random': r singular triplets at random indices."""
    parse_init(lora_weight_init)
    return str(lora_weight_init).endswith('_random')


@dataclass
class SoMAConfig:
    """Which linears get a minor-component adapter, and how it is initialised and trained.

    Args:
        type: 'sora' (release name) or 'soma'.
        r: adapter rank (before ``rank_ramp``).
        lora_alpha: scale numerator, ``s = lora_alpha / rank``.
        lora_dropout: dropout on the adapter branch input.
        first_eigen: take the largest r singular triplets instead of the smallest.
        lora_weight_init: 'sora' (exact) or 'sora_niter_<N>' (randomised, N iterations);
            'sora_random' (ablation: r singular triplets at random indices, seeded);
            'soma' spellings too.
        target_modules: names (module-name suffixes, dotted) or one regex (full match).
        start_lora_idx: first adapted block; earlier blocks stay entirely frozen.
        rank_ramp: r, 2r, 4r, 8r from blocks 0, 12, 16, 20.
        bias: 'all' (biases of the target modules in adapted blocks train), 'lora_only'
            (biases of the adapted layers train), 'none'.
        merge_weights: ``eval()`` merges ``s*B@A`` into the weight, ``train()`` unmerges.
        fan_in_fan_out: accepted; True is an error for ``nn.Linear`` targets.
        modules_to_save: extra modules (name suffixes) whose parameters train.
        svd_init_on: 'pretrained' (SVD of the loaded weights, as in the paper) or
            'construction' (SVD when built, as the original release; its defect, SPEC 3).
        layers_pattern: regex of the block container name; a module in ``<pattern>.<i>.``
            has block index i. None: no blocks, every matching linear is adapted with rank r
            (``start_lora_idx`` and ``rank_ramp`` do not apply).
        enable_lora: the release's unused field; any value but None warns and is ignored
            (not a field: ``to_dict()`` and ``==`` never see it).
    """
    type: str = 'sora'
    r: int = 16
    lora_alpha: float = 16
    lora_dropout: float = 0.0
    first_eigen: bool = False
    lora_weight_init: str = 'sora'
    target_modules: Union[List[str], str] = field(
        default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    start_lora_idx: int = DEFAULT_START_LORA_IDX
    rank_ramp: bool = False
    bias: str = 'all'
    merge_weights: bool = False
    fan_in_fan_out: bool = False
    modules_to_save: Optional[List[str]] = None
    svd_init_on: str = 'pretrained'
    layers_pattern: Optional[str] = DEFAULT_LAYERS_PATTERN
    enable_lora: InitVar[Optional[object]] = None

    def __post_init__(self, enable_lora=None):
        if enable_lora is not None:
            warnings.warn(f'SoMAConfig: lora_cfg key enable_lora={enable_lora!r} is ignored '
                          f'(the original release never used it either)', UserWarning,
                          stacklevel=3)
        if self.type not in _TYPES:
            raise ValueError(f"SoMAConfig.type must be 'sora' or 'soma', got {self.type!r}")
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f'SoMAConfig.r must be a positive integer, got {self.r!r}')
        if self.lora_alpha is None or self.lora_alpha <= 0:
            raise ValueError(f'SoMAConfig.lora_alpha must be > 0, got {self.lora_alpha!r}')
        if not 0.0 <= float(self.lora_dropout) < 1.0:
            raise ValueError(
                f'SoMAConfig.lora_dropout must be in [0, 1), got {self.lora_dropout!r}')
        if is_random_init(self.lora_weight_init) and self.first_eigen:
            raise ValueError(f'SoMAConfig: lora_weight_init={self.lora_weight_init!r} picks '
                             f'random components; first_eigen=True contradicts it')
        if self.bias not in _BIAS_MODES:
            raise ValueError(f"SoMAConfig.bias must be one of {_BIAS_MODES}, got {self.bias!r}")
        if self.svd_init_on not in _SVD_INIT_ON:
            raise ValueError(
                f'SoMAConfig.svd_init_on must be one of {_SVD_INIT_ON}, got {self.svd_init_on!r}')
        if isinstance(self.target_modules, str):
            try:
                re.compile(self.target_modules)
            except re.error as exc:
                raise ValueError(f'SoMAConfig.target_modules: bad regex {self.target_modules!r}: '
                                 f'{exc}') from None
        elif not self.target_modules or not all(isinstance(t, str) and t
                                                for t in self.target_modules):
            raise ValueError('SoMAConfig.target_modules must be a regex string or a non-empty '
                             f'list of module names, got {self.target_modules!r}')
        else:
            self.target_modules = list(self.target_modules)
        if not isinstance(self.start_lora_idx, int) or self.start_lora_idx < 0:
            raise ValueError(
                f'SoMAConfig.start_lora_idx must be an integer >= 0, got {self.start_lora_idx!r}')
        if self.modules_to_save is not None:
            self.modules_to_save = list(self.modules_to_save)

    @property
    def niter(self) -> Optional[int]:
        """Subspace iterations of the randomised init; None for the exact one."""
        return parse_init(self.lora_weight_init)

    def rank_for_block(self, block_idx: Optional[int]) -> int:
        """Adapter rank in block ``block_idx`` (None: no block structure -> r)."""
        if not self.rank_ramp or block_idx is None:
            return self.r
        factor = 1
        for start in RANK_RAMP_STARTS:
            if block_idx >= start:
                factor *= 2
        return self.r * factor

    @classmethod
    def from_dict(cls, cfg: dict) -> 'SoMAConfig':
        """Build from a config dict (``lora_cfg``); unknown keys are an error
        (``enable_lora`` is accepted and ignored with a warning)."""
        if isinstance(cfg, cls):
            return cfg
        cfg = dict(cfg)
        known = {f.name for f in fields(cls)} | {'enable_lora'}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(
                f'SoMAConfig: unknown lora_cfg key(s) {unknown}; known: {sorted(known)}')
        return cls(**cfg)

    def to_dict(self) -> dict:
        """Plain dict (json-serialisable) that :meth:`from_dict` reads back."""
        return asdict(self)


SoraConfig = SoMAConfig
