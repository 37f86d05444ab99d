"""`hf_mdlm.trainer`, kept for code written before the package was split: the same module as `hf_mdlm.training.trainer`."""

import sys

from .training import trainer as _module

sys.modules[__name__] = _module
