"""`push_to_hub`: upload a checked folder in one commit; the token is never written or logged."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .checks import _files_with_token, check_hub_folder, hub_files

DEFAULT_COMMIT_MESSAGE = "Upload masked diffusion LM exported with hf_mdlm"


def push_to_hub(
    out_dir,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
):
    """Upload an exported folder to the Hub model repository `repo_id` in one commit; returns the `CommitInfo`.

    `check_hub_folder` runs first, and so does a scan for the token in the files: with any problem a ValueError
    lists them all and nothing touches the network. Then the repository is created if needed (`private`:
    None keeps the Hub's default / the existing visibility; True refuses an existing public repository) and every
    file of the folder is committed at once.
    `token`: None lets huggingface_hub use `HF_TOKEN` or the login cache. It is never printed or written.
    """
    from huggingface_hub import CommitOperationAdd, HfApi, get_token

    folder = Path(out_dir)
    problems = check_hub_folder(folder)
    names = hub_files(folder) if folder.is_dir() else []
    secret = token if token is not None else get_token()
    if secret:
        problems += [f"{name} contains your Hugging Face token: remove it before uploading"
                     for name in _files_with_token(folder, names, secret)]
    if problems:
        raise ValueError(f"refusing to upload {folder} to {repo_id}:\n" + "\n".join(f"- {p}" for p in problems))

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    # create_repo leaves an existing repository's visibility as it is: `private` must not upload into a public one
    if private and not api.repo_info(repo_id, repo_type="model").private:
        raise ValueError(f"{repo_id} already exists and is public: asked for a private upload, nothing was sent. Make "
                         "it private on the Hub (Settings) or choose another repository")
    if revision is not None and revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in names]
    return api.create_commit(repo_id, operations=operations, commit_message=commit_message, revision=revision,
                             repo_type="model")


@dataclass
class HubRequest:
    """What `--push_to_hub` asked for, kept out of the TrainingArguments that Trainer sees."""

    repo_id: str | None
    private: bool | None
    token: str | None
    revision: str | None


def detach_hub_settings(training_args) -> HubRequest | None:
    """Take the Hub settings out of `training_args` before a Trainer sees them; returns them (None: no push asked).

    Trainer's own push would upload the output folder unchecked (with the pickled `training_args.bin`), and every
    `training_args.bin` it writes (output folder, each `checkpoint-*`) pickles `hub_token` in plain text. With
    `push_to_hub=False` and `hub_token=None` neither can happen: our checked export (`export_for_hub` then
    `push_to_hub`) is the only upload path, and the token lives only in the returned object, in memory.
    """
    request = None
    if training_args.push_to_hub:
        request = HubRequest(repo_id=training_args.hub_model_id, private=training_args.hub_private_repo,
                             token=training_args.hub_token, revision=getattr(training_args, "hub_revision", None))
    training_args.push_to_hub = False
    training_args.hub_token = None
    return request
