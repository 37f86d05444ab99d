"""Which commit and which command wrote a results file: the line every results writer in `experiments/` puts at the
top of its markdown (the project's rule: every results file names both).

    Commit 1a2b3c4 with uncommitted changes; command: `python experiments/replicate.py --quick --seed 0`
"""

import shlex
import subprocess
import sys
from pathlib import Path


def _git(folder: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def commit_of(folder) -> str:
    """The short commit of the git work tree holding `folder` (its code is what ran), with " with uncommitted
    changes" when tracked files differ from it (untracked files are not counted); "unknown" outside git."""
    folder = Path(folder).resolve()
    folder = folder if folder.is_dir() else folder.parent
    head = _git(folder, "rev-parse", "--short", "HEAD")
    if not head or not head.strip():
        return "unknown"
    status = _git(folder, "status", "--porcelain", "--untracked-files=no")
    dirty = status is None or bool(status.strip())  # a status that cannot be read is not called clean
    return head.strip() + (" with uncommitted changes" if dirty else "")


def command_of(script, argv=None) -> str:
    """`python <script> <arguments>`: the script's path relative to its git work tree's root (else to the current
    folder, else absolute) and the arguments (`argv`, default sys.argv[1:]) quoted for a POSIX shell."""
    path = Path(script).resolve()
    shown = None
    root = _git(path.parent, "rev-parse", "--show-toplevel")
    for base in ([Path(root.strip()).resolve()] if root and root.strip() else []) + [Path.cwd().resolve()]:
        try:
            shown = path.relative_to(base).as_posix()
            break
        except ValueError:
            continue
    arguments = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", shown or str(path), *([shlex.join(str(a) for a in arguments)] if arguments else [])])


def provenance_line(script, argv=None) -> str:
    """"Commit <hash>[ with uncommitted changes]; command: `python <script> <arguments>`" (no final period), for
    the script `script` (pass `__file__`) run with `argv` (default sys.argv[1:])."""
    command = command_of(script, argv)
    tick = "``" if "`" in command else "`"
    pad = " " if tick == "``" else ""
    return f"Commit {commit_of(script)}; command: {tick}{pad}{command}{pad}{tick}"


def stamp(path, line: str) -> None:
    """Put `line` (a provenance line) at the top of the markdown file `path`, followed by a blank line."""
    path = Path(path)
    path.write_text(f"{line}.\n\n" + path.read_text())
