"""Model folders for the Hugging Face Hub: saving a run, checking, exporting with a card, uploading.

    from hf_mdlm.hub import export_for_hub, push_to_hub

    folder = export_for_hub(trainer.model, tokenizer, "hub/my-model", repo_id="me/my-model",
                            training_args=trainer.args, trainer_state=trainer.state)
    push_to_hub(folder, "me/my-model")

files.py (which files make a folder), folder.py (a trained run's output folder), records.py (run records with
secrets blanked), checks.py (`check_hub_folder`), cards.py (model/adapter cards), export.py (`export_for_hub`),
upload.py (`push_to_hub`). `push_to_hub` refuses a folder with any problem before it makes a network call.

outputs.py (output folders: checked before the work, locked, refused when not empty, the final save staged).

Tokens: `push_to_hub` takes `token=` or lets `huggingface_hub` find one (`HF_TOKEN`, `hf auth login`). It is
never printed, logged or written; training arguments are saved with their `*_token` fields blanked, and
`detach_hub_settings` takes `push_to_hub`/`hub_token` out of TrainingArguments before a Trainer sees them
(`MDLMTrainer` refuses both), so Trainer never pushes and never pickles the token into `training_args.bin`.
"""

from .cards import render_model_card
from .checks import check_hub_folder, hub_files
from .export import export_for_hub
from .files import HUB_CODE_FILES, TOKENIZER_FILES, copy_hub_code
from .folder import check_remote_code_loads, fit_generation_config, gathered_state_dict, save_model_folder
from .outputs import (
    OutputFolder,
    OutputFolderError,
    check_writable_dir,
    prepare_fresh_folder,
    prepare_run_outputs,
    resolve_resume,
)
from .records import save_run_record
from .upload import HubRequest, detach_hub_settings, push_to_hub

__all__ = [
    "HUB_CODE_FILES",
    "HubRequest",
    "OutputFolder",
    "OutputFolderError",
    "TOKENIZER_FILES",
    "check_hub_folder",
    "check_remote_code_loads",
    "check_writable_dir",
    "copy_hub_code",
    "detach_hub_settings",
    "export_for_hub",
    "fit_generation_config",
    "gathered_state_dict",
    "hub_files",
    "prepare_fresh_folder",
    "prepare_run_outputs",
    "push_to_hub",
    "render_model_card",
    "resolve_resume",
    "save_model_folder",
    "save_run_record",
]
