"""The slack-CTC paper in miniature: presets (presets.py) and the whole comparison (run.py), run by
`experiments/replicate.py`; A2D against training from scratch (a2d.py), run by `experiments/a2d_experiment.py`;
the commit-and-command line at the top of every results file (provenance.py)."""

from .a2d import A2D_PRESETS, A2DPreset, resolve_a2d_preset, run_a2d_experiment
from .presets import MODES, PRESETS, Preset, resolve_preset
from .run import arms, run_replication

__all__ = [
           "A2D_PRESETS",
           "MODES",
           "PRESETS",
           "A2DPreset",
           "Preset",
           "arms",
           "resolve_a2d_preset",
           "resolve_preset",
           "run_a2d_experiment",
           "run_replication",
]
