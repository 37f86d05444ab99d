"""`hf_mdlm.losses`, kept for code written before the package was split: the same module as `hf_mdlm.training.losses`."""

import sys

from .training import losses as _module

sys.modules[__name__] = _module
