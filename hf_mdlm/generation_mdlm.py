"""Diffusion sampling for MDLM models (being written: see issue 5)."""


class MDLMGenerationMixin:
    pass
