
from .synthetic_seg import make_synthetic_dg_benchmark  # noqa: F401
from .diverse_weather import DiverseWeatherDataset  # noqa: F401
