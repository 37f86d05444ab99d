"""Output folders that never lose or mix runs.

A run's `output_dir` is checked before any work (a folder, writable), locked while the run uses it (a second run
into the same folder fails at once), refused when it holds an earlier run's files (unless the run resumes from a
checkpoint there, or `overwrite` clears those files first), and the final model is written into a hidden staging
folder and moved into place only once it is complete (`config.json` last: a run killed during the final save
leaves a folder that does not load, never a half-written model that does). A staging folder left by a killed run
is removed, with a warning, by the next run that takes the lock.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

from .files import ADAPTER_FILES, HUB_CODE_FILES, RUN_FILES, TOKENIZER_FILES

logger = logging.getLogger(__name__)

LOCK_NAME = ".hf_mdlm.lock"
STAGING_NAME = ".hf_mdlm-saving"  # the final model is written here, then moved into place
PROBE_PREFIX = ".hf_mdlm-probe-"  # written and removed at once to test that a folder is writable

# Everything a run (ours or Trainer's) writes into its output folder; `overwrite` removes exactly these.
RUN_OUTPUT_PATTERNS = (
    "config.json", "generation_config.json", "model.safetensors", "model-*-of-*.safetensors",
    "model.safetensors.index.json", "training_args.bin", "README.md", "adapter",
    "checkpoint-*", "runs", "all_results.json", "train_results.json", "eval_results.json",
    *HUB_CODE_FILES, *TOKENIZER_FILES, *RUN_FILES, *ADAPTER_FILES, STAGING_NAME,
)

_RESUME_LAST = ("true", "last", "yes", "1")
_RESUME_NONE = ("", "false", "none", "no", "0")


class OutputFolderError(ValueError):
    """An output folder that cannot be used as asked (not a folder, not writable, in use, not empty)."""


def is_run_output(name: str) -> bool:
    """Whether `name` (an entry of an output folder) is something a training run writes."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in RUN_OUTPUT_PATTERNS)


def check_writable_dir(path, what: str = "output folder") -> Path:
    """Make sure `path` is, or can be created as, a folder we can write into: create it and write a probe file.

    Raises OutputFolderError naming the path and the reason, before any work is done.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputFolderError(f"{what} {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f"{PROBE_PREFIX}{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink(missing_ok=True)  # a run holding the folder's lock may have removed it as a leftover
    except OSError as error:
        raise OutputFolderError(f"{what} {path} cannot be written: {error.strerror or error}") from None
    return path


def resolve_resume(value, output_dir) -> str | None:
    """`--resume_from_checkpoint` as Trainer users expect: None/'false' start afresh, True/'true'/'last' resume from
    the last complete `checkpoint-*` of `output_dir` (an error when there is none), anything else must be a complete
    checkpoint folder. A checkpoint is complete once Trainer wrote its `trainer_state.json`, the last file of a
    save, whole (a save killed while writing it leaves it empty or cut short): one killed while saving is passed
    over, with a warning."""
    if value is None or value is False:
        return None
    text = str(value).strip()
    if value is True or text.lower() in _RESUME_LAST:
        found = sorted((p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and p.name[11:].isdigit()),
                       key=lambda p: int(p.name[11:]), reverse=True) if Path(output_dir).is_dir() else []
        for checkpoint in found:
            if _finished_state(checkpoint):
                return str(checkpoint)
            logger.warning("passing over %s: its save did not finish (no complete trainer_state.json)", checkpoint)
        raise OutputFolderError(f"--resume_from_checkpoint {text}: {output_dir} holds no complete checkpoint-* folder "
                                "to resume from")
    if text.lower() in _RESUME_NONE:
        return None
    if not Path(text).is_dir():
        raise OutputFolderError(f"--resume_from_checkpoint {text}: no such checkpoint folder")
    if not _finished_state(Path(text)):
        raise OutputFolderError(f"--resume_from_checkpoint {text}: not a complete checkpoint (no complete "
                                "trainer_state.json; was its save interrupted?)")
    if not any(Path(text).glob("rng_state*.pth")):  # Trainer writes it into every checkpoint, on every backend
        raise OutputFolderError(f"--resume_from_checkpoint {text}: a finished run's output folder, not a training "
                                "checkpoint (no optimizer, scheduler or random state to resume): resume from one of "
                                f"its checkpoint-N folders, or train on from its weights with --model_name_or_path {text}")
    return text


def _finished_state(checkpoint: Path) -> bool:
    """Whether `checkpoint` holds a whole `trainer_state.json` (written last by Trainer's save)."""
    try:
        return "global_step" in json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


class OutputFolder:
    """Holds the lock of a run's output folder (a context manager, or `close()` it).

    `OutputFolder(path, resume=..., overwrite=...)` checks and prepares the folder at once:

    - the folder is created if needed and must be writable (else OutputFolderError);
    - the lock is taken (another run holding it: OutputFolderError at once, naming its pid);
    - a staging folder left by a killed final save is removed (with a warning);
    - a folder holding anything but the lock is refused unless `resume` (a checkpoint path: its files are the run)
      or `overwrite` (the files a run writes are deleted first; a folder holding other files is refused even then,
      so that `--overwrite_output_dir` pointed at the wrong folder deletes nothing).

    The lock is an OS lock (`fcntl.flock`): it goes away with the process, so a killed run never blocks the next.
    """

    def __init__(self, path, *, resume=None, overwrite: bool = False, what: str = "output_dir",
                 writes=RUN_OUTPUT_PATTERNS, flag: str = "--overwrite_output_dir", reuse: bool = False):
        self.created = not Path(path).exists()  # made by this command: removed again if it ends empty
        self.path = check_writable_dir(path, what)
        self.writes, self.flag = tuple(writes), flag  # what this command writes; the flag that replaces it
        self.reuse = reuse  # the command itself picks up what it wrote before (and checks it): keep its files
        self._handle = None
        self._lock()
        try:
            self._clean_leftovers()
            self._check_contents(resume, overwrite, what)
        except BaseException:
            self.close()
            raise

    def _lock(self) -> None:
        lock_path = self.path / LOCK_NAME
        try:
            import fcntl
        except ImportError:  # pragma: no cover (Windows): no advisory locks, the other checks still hold
            self._handle = open(lock_path, "a+")
            return
        while True:
            handle = open(lock_path, "a+")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise OutputFolderError(
                    f"{self.path} is in use by another run ({holder}): wait for it to finish or choose another "
                    "output folder"
                ) from None
            # The run that held it removes the file when it ends (see close): a lock taken on the removed file
            # guards nothing, so take it again on the file now there.
            if _same_file(handle, lock_path):
                break
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self._handle = handle

    def _clean_leftovers(self) -> None:
        remove_leftovers(self.path)
        hidden = [p.name for p in self.path.iterdir()
                  if p.name.startswith(".") and p.name != LOCK_NAME and not is_run_output(p.name)
                  and not p.name.startswith(PROBE_PREFIX)]
        if hidden:
            logger.warning("%s holds hidden files no hf_mdlm run writes (left by another tool?): %s", self.path,
                           ", ".join(sorted(hidden)))

    def _check_contents(self, resume, overwrite: bool, what: str) -> None:
        # another process's writability probe may come and go at any moment: it is never part of a run
        entries = sorted(p.name for p in self.path.iterdir()
                         if p.name != LOCK_NAME and not p.name.startswith(PROBE_PREFIX))
        # resuming continues this folder's own run: a checkpoint elsewhere leaves this folder to the usual checks
        if not entries or (resume and self.path.resolve() in Path(resume).resolve().parents):
            return
        foreign = [name for name in entries if not any(fnmatch.fnmatchcase(name, p) for p in self.writes)]
        if self.reuse and not overwrite and not foreign:
            return
        if not overwrite:
            shown = ", ".join(entries[:8]) + (", ..." if len(entries) > 8 else "")
            training = self.writes == RUN_OUTPUT_PATTERNS
            resume_hint = "resume its run (--resume_from_checkpoint true), " if training else ""
            raise OutputFolderError(
                f"{what} {self.path} is not empty ({shown}): its files would mix with this run's. Choose a new "
                f"folder, {resume_hint}or pass {self.flag} to delete the earlier run's files first"
            )
        if foreign:
            raise OutputFolderError(
                f"{self.flag}: {self.path} holds files that this command does not write ({', '.join(foreign[:8])}"
                f"{', ...' if len(foreign) > 8 else ''}); nothing was deleted. Is it the right folder?"
            )
        for name in entries:
            target = self.path / name
            shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
        logger.info("%s: removed the earlier run's files from %s", self.flag, self.path)

    def close(self) -> None:
        """Release the lock and remove its file, so that a finished folder holds only what the run wrote (and a
        folder this command made and left empty, e.g. refused before any work, goes too)."""
        if self._handle is not None:
            if _same_file(self._handle, self.path / LOCK_NAME):
                (self.path / LOCK_NAME).unlink(missing_ok=True)  # while still held: no one else can be using it
            self._handle.close()  # releases the lock
            self._handle = None
            if self.created:
                with contextlib.suppress(OSError):  # not empty: the run's files stay
                    self.path.rmdir()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _same_file(handle, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


def remove_leftovers(folder: Path) -> None:
    """Remove what a killed save or export leaves in `folder`: its staging folder and writability probes."""
    staging = folder / STAGING_NAME
    if staging.exists():
        size = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
        logger.warning("removing %s (%.1f MB): the unfinished save of a process that was killed", staging, size / 1e6)
        shutil.rmtree(staging)
    for probe in folder.glob(PROBE_PREFIX + "*"):  # left by a process killed between writing and removing it
        probe.unlink(missing_ok=True)


def prepare_fresh_folder(path, *, overwrite: bool = False, what: str = "folder",
                         flag: str = "--overwrite_output_dir") -> Path:
    """A folder that a later step will fill (e.g. the `<output_dir>-hub` export folder): writable and empty now.

    A killed save's leftovers are removed first; then an existing non-empty folder is an error, unless `overwrite`
    and it holds only files a run or an export writes (then it is emptied)."""
    path = Path(path)
    if path.is_dir():
        remove_leftovers(path)
    if path.is_dir() and any(path.iterdir()):
        entries = sorted(p.name for p in path.iterdir())
        foreign = [name for name in entries if not is_run_output(name)]
        if not overwrite or foreign:
            hint = (f"it holds files no run writes ({', '.join(foreign[:8])})" if overwrite
                    else f"pass {flag} to replace it, or remove it")
            raise OutputFolderError(f"{what} {path} already exists and is not empty (left by an earlier run?): {hint}")
        shutil.rmtree(path)
    return check_writable_dir(path, what)


def staging_folder(output_dir) -> Path:
    """A fresh, empty staging folder inside `output_dir` for `publish_staged`."""
    staging = Path(output_dir) / STAGING_NAME
    if staging.exists():
        logger.warning("removing %s: the unfinished save of a process that was killed", staging)
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def publish_staged(staging, output_dir) -> None:
    """Move every entry of the complete `staging` folder into `output_dir` (renames on one filesystem, replacing
    what is there), `config.json` / `adapter_config.json` last, then remove `staging`."""
    staging, output_dir = Path(staging), Path(output_dir)
    for path in staging.iterdir():  # flush the data before the renames make it visible
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    # the file that makes the folder load comes last: config.json (a model) or adapter_config.json (an adapter)
    names = sorted((p.name for p in staging.iterdir()), key=lambda name: name in ("config.json", "adapter_config.json"))
    for name in names:
        target = output_dir / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(staging / name, target)
    staging.rmdir()


class RunOutputs:
    """What `prepare_run_outputs` checked and holds: the locked output folder (None on processes that do not
    save), the checkpoint to resume from, the Hub request and its export folder. A context manager."""

    def __init__(self, folder, resume, hub, hub_dir):
        self.folder, self.resume, self.hub, self.hub_dir = folder, resume, hub, hub_dir

    def publish(self, output_dir, **card) -> None:
        """When the run asked for a push: our checked export of the saved `output_dir` (its model card built with
        `card`, e.g. `base_model`), uploaded in one commit, the run's only upload. Call it on the main process."""
        if self.hub is None:
            return
        from .export import export_for_hub
        from .upload import push_to_hub

        repo_id = self.hub.repo_id or Path(output_dir).name
        folder = export_for_hub(output_dir, None, self.hub_dir, repo_id=repo_id, **card)
        push_to_hub(folder, repo_id, private=self.hub.private, token=self.hub.token, revision=self.hub.revision)

    def close(self) -> None:
        if self.folder is not None:
            self.folder.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def check_reporting(training_args) -> None:
    """Fail now, naming the missing package, when a `--report_to` integration cannot start (e.g. wandb not
    installed): Trainer would find out only after the model and data are loaded."""
    from transformers.integrations import get_reporting_integration_callbacks

    for callback in get_reporting_integration_callbacks(getattr(training_args, "report_to", None) or []):
        try:
            callback()
        except (RuntimeError, ImportError) as error:
            raise OutputFolderError(f"--report_to {callback.__name__.removesuffix('Callback').lower()}: {error}") \
                from None


def hub_offline() -> bool:
    """Whether huggingface_hub is in offline mode (HF_HUB_OFFLINE), where every upload fails."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def prepare_run_outputs(training_args, *, overwrite: bool = False, inputs: dict | None = None,
                        lora_r: int | None = None) -> RunOutputs:
    """Everything a training run will write, checked before any work (call it first thing).

    Takes `push_to_hub`/`hub_token` out of `training_args` (`detach_hub_settings`), resolves
    `resume_from_checkpoint` ('true': the last checkpoint of `output_dir`) and sets the resolved value back, and on
    the processes that save (`training_args.should_save`) takes the output folder (`OutputFolder`: writable, locked,
    empty unless resuming or `overwrite`) and, when a push is asked, checks that a token is available and that the
    export folder `<output_dir>-hub` is writable and empty (`overwrite` empties an earlier export).

    `inputs` ({flag: path}, e.g. the model, data and tokenizer) are what the run reads: neither output folder may be
    one of them, contain one or lie inside one (a local path; Hub ids are not checked). `lora_r` (0 for a full
    fine-tune) is checked against the checkpoint to resume, which must be of the same kind and rank.
    """
    from .upload import detach_hub_settings

    hub = detach_hub_settings(training_args)
    check_reporting(training_args)
    output_dir = str(training_args.output_dir)
    for flag, path in (inputs or {}).items():
        if path and Path(path).exists():
            for out, what in ((output_dir, "--output_dir"), (f"{output_dir.rstrip('/')}-hub", "the Hub export folder")):
                check_apart(out, path, what, f"the {flag} path")
    resume = resolve_resume(training_args.resume_from_checkpoint, output_dir)
    if resume is not None and Path(output_dir).resolve() not in Path(resume).resolve().parents:
        check_same_objective(resume, training_args)  # another run's checkpoint: it must train the same thing
    if resume is not None and lora_r is not None:
        check_checkpoint_kind(resume, lora_r)
    training_args.resume_from_checkpoint = resume
    folder = hub_dir = None
    # The other processes wait until the main one has checked (and, with overwrite, emptied) the folder.
    with training_args.main_process_first(local=False, desc="checking the output folder"):
        if training_args.should_save:
            folder = OutputFolder(output_dir, resume=resume, overwrite=overwrite)
            try:
                if hub is not None:
                    from huggingface_hub import get_token

                    if hub_offline():  # the upload at the end would fail after the whole run
                        raise OutputFolderError("--push_to_hub cannot upload in offline mode (HF_HUB_OFFLINE is set):"
                                                " unset it, or train without --push_to_hub and upload the saved "
                                                "folder later with examples/push_to_hub.py")
                    if hub.token is None and get_token() is None:
                        raise OutputFolderError("--push_to_hub needs a Hugging Face token (HF_TOKEN, `hf auth "
                                                "login` or --hub_token) and none was found")
                    hub_dir = prepare_fresh_folder(f"{output_dir.rstrip('/')}-hub", overwrite=overwrite,
                                                   what="the Hub export folder")
            except BaseException:
                folder.close()
                raise
    return RunOutputs(folder, resume, hub, hub_dir)


def check_checkpoint_kind(checkpoint, lora_r: int) -> None:
    """A LoRA run resumes from a checkpoint of its adapter (same rank), a full fine-tune from a full checkpoint: the
    other kind fails deep inside transformers or torch (missing keys, optimizer groups of another size)."""
    config = Path(checkpoint) / "adapter_config.json"
    saved = json.loads(config.read_text()).get("r") if config.is_file() else 0
    if bool(saved) != bool(lora_r) or (saved and lora_r and saved != lora_r):
        holds = f"a LoRA adapter of rank {saved}" if saved else "a full fine-tune"
        wants = f"--lora_r {saved}" if saved else "no --lora_r"
        raise OutputFolderError(f"--resume_from_checkpoint {checkpoint} holds {holds}: resume it with {wants}, as the "
                                "run that saved it (or start a new run from a saved model with --model_name_or_path)")


def check_same_objective(checkpoint, training_args) -> None:
    """Refuse to resume from another run's checkpoint whose recorded objective (loss weights, slack, canvas fill,
    noise) differs from this run's, naming the fields; a checkpoint that records none (older) is resumed with a
    warning."""
    from ..training.arguments import OBJECTIVE_FILE

    if not hasattr(training_args, "objective_settings"):
        return
    record = Path(checkpoint) / OBJECTIVE_FILE
    if not record.is_file():
        logger.warning("%s records no objective settings (%s): cannot check it trained what this run trains",
                       checkpoint, OBJECTIVE_FILE)
        return
    theirs, ours = json.loads(record.read_text()), training_args.objective_settings()
    differ = [f"{name}={ours[name]!r} here, {theirs.get(name)!r} there" for name in ours if theirs.get(name) != ours[name]]
    if differ:
        raise OutputFolderError(f"--resume_from_checkpoint {checkpoint}: that run trained another objective ("
                                + "; ".join(differ) + "): resume with its settings, or start afresh")


def check_apart(out_dir, model_dir, what: str = "--out_dir", input_what: str = "the model folder") -> None:
    """Refuse an `out_dir` that is an input (`model_dir`: a model, data or tokenizer path), contains it or lies inside
    it: deleting or filling it would touch the input (e.g. `--overwrite` removes OUT_DIR first)."""
    out, model = Path(out_dir).resolve(), Path(model_dir).resolve()
    if out == model or model in out.parents or out in model.parents:
        relation = "is" if out == model else "contains" if out in model.parents else "lies inside"
        raise OutputFolderError(f"{what} {out_dir} {relation} {input_what} {model_dir}: choose a folder apart "
                                "from it (writing or overwriting the output would change or delete it)")
