"""`hf_mdlm.noise`, kept for code written before the package was split: the same module as `hf_mdlm.training.canvas`."""

import sys

from .training import canvas as _module

sys.modules[__name__] = _module
