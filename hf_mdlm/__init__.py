"""hf_mdlm: masked diffusion language models for the Hugging Face ecosystem."""
