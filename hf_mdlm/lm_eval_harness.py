"""`hf_mdlm.lm_eval_harness`, kept for code written before the package was split: the same module as
`hf_mdlm.evaluation.lm_eval`. `python -m hf_mdlm.lm_eval_harness ...` runs lm_eval's command line with the
adapter registered as `hf_mdlm`."""

import sys

from .evaluation import lm_eval as _module

if __name__ == "__main__":
    sys.exit(_module.main())
sys.modules[__name__] = _module
