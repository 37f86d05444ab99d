"""The slack-CTC paper in miniature: presets (presets.py) and the whole comparison (run.py), run by
`examples/replicate.py`."""

from .presets import MODES, PRESETS, Preset, resolve_preset
from .run import arms, run_replication

__all__ = ["MODES", "PRESETS", "Preset", "arms", "resolve_preset", "run_replication"]
