"""The run folders of the commands: made by the command itself, never shared, and checked before Hydra makes them.

`${deeplab.run_dir:PARENT}` (configs/hydra/default.yaml, evaluate.yaml, predict.yaml) names and makes a command's own
dated folder; `run_dir_problem` is the command line's check that the folder Hydra is about to make can be made and
written, in one sentence naming the key that sets it.
"""

import contextlib
import itertools
import os
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from deeplab.torch_files import name_limits

# The run folders made by the command that is running, by parent folder; None outside a command's Hydra main (its
# command-line check, --cfg, --help, a test's compose), where `run_dir` names a folder without making it.
_RUN_DIRS: ContextVar[dict[str, str] | None] = ContextVar("run_dirs", default=None)


def run_dir(parent: str, chosen: str | None = None) -> str:
    """`${deeplab.run_dir:PARENT}`: a command's own new folder PARENT/<date_time>, made here with an exclusive mkdir
    so that no two commands share one (Hydra's ${now:...} gives two started in one second the same folder, and one
    metrics.json replaced the other): when another process has that name, the next free of <date_time>_02, _03, ...
    (names that still sort by time). `chosen` (predict's output=) is the folder itself, when given."""
    if chosen:  # predict's output=DIR (empty, as null: the dated folder)
        return os.path.expanduser(str(chosen))
    made = _RUN_DIRS.get()
    if made is not None and parent in made:  # Hydra resolves the run folder more than once
        return made[parent]
    dated = os.path.join(parent, datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
    if made is None:
        return dated
    os.makedirs(parent, exist_ok=True)
    for n in itertools.count(1):
        folder = dated if n == 1 else f"{dated}_{n:02d}"
        try:
            os.mkdir(folder)
        except FileExistsError:
            continue
        made[parent] = folder
        return folder


OmegaConf.register_new_resolver("deeplab.run_dir", run_dir, replace=True)


@contextlib.contextmanager
def making_run_dirs() -> Iterator[None]:
    """Within (a command's Hydra main), `run_dir` makes the folders it names, one per parent folder."""
    made = _RUN_DIRS.set({})
    try:
        yield
    finally:
        _RUN_DIRS.reset(made)


# the keys a command's run folder is made from, when set: train's output_root (runs go under it), predict's output
RUN_DIR_KEYS = ("output_root", "output")
# room a run folder's path must leave for the files written in it, under the file system's path limit: the longest,
# TensorBoard's tb/events.out.tfevents.<time>.<host>.<pid>.<n>, is about 100 bytes with a long host name
FILE_ROOM = 128


def run_dir_problem(cfg: DictConfig, args: Sequence[str], *, folder: str = "run", writes: bool = True
                    ) -> str | None:
    """One sentence when the run folder (`folder="sweep"`: a sweep's) that Hydra would make cannot be made (Hydra's
    own error is a traceback): a file or a broken link on its way, a folder this user cannot write (nor, where the
    command `writes` in it, the folder itself), a name or a path longer than the file system takes; naming the key
    that sets it: hydra.run.dir, or output_root / output that it is made from."""
    named = any(a.partition("=")[0].lstrip("+") == f"hydra.{folder}.dir" for a in args)
    source = None if named or folder != "run" else next((k for k in RUN_DIR_KEYS if k in cfg), None)
    if source == "output_root" and not cfg.output_root:  # runs would go to / (Hydra's ${now}) or nowhere
        return (f"output_root={'null' if cfg.output_root is None else ''}: empty, but runs go under it and "
                f"resume=auto looks there; give a folder, e.g. output_root=outputs/train")
    try:
        given = str(cfg.hydra[folder].dir)
    except Exception:  # noqa: BLE001 - a value only Hydra's own run can resolve: its check
        return None
    key = f"{source}={cfg[source]}" if source and cfg[source] is not None else f"hydra.{folder}.dir={given}"
    name, path = source or f"hydra.{folder}.dir", Path(given)  # name: the key to set (predict's output=, not run.dir)
    if given.startswith("~"):  # Hydra makes the folder as written: one named "~" here, a trap for `rm -rf ~`
        written, _, value = key.partition("=")
        return (f"{key}: Hydra does not expand ~ in its run folder and would make a folder named '~' here; write "
                f"the full path, e.g. {written}={Path(value).expanduser()}")
    # os.path's tests, not Path's: a name too long for the file system is no folder there, not an OSError
    blocking = next((p for p in [path, *path.parents] if os.path.lexists(p) and not os.path.isdir(p)), None)
    if blocking is not None:
        what = f"a link to {os.readlink(blocking)}, which does not exist" if os.path.islink(blocking) else \
            "a file, not a folder"
        return f"{key}: {blocking} is {what}, so the run folder {path} cannot be made; choose a folder"
    existing = next(p for p in [path, *path.parents, Path(".")] if os.path.isdir(p))
    name_max, path_max = name_limits(existing)
    long = next((part for part in path.parts if len(os.fsencode(part)) > name_max), None)
    if long is not None:  # the key without its (long) value
        return (f"{name}: the folder name {long[:20]}... is {len(os.fsencode(long))} bytes long, and the file system "
                f"takes at most {name_max} bytes in one name; choose a shorter name")
    length = len(os.fsencode(os.path.abspath(path)))
    if length + FILE_ROOM > path_max:
        return (f"{name}: the run folder's full path, {os.path.abspath(path)[:40]}..., is {length} bytes long, "
                f"which leaves no room for its files' names under the file system's limit of {path_max} bytes in "
                f"a path; choose a shorter path")
    if (existing != path or writes) and not os.access(existing, os.W_OK | os.X_OK):
        why = "a read-only file system" if os.statvfs(existing).f_flag & os.ST_RDONLY else "no write permission"
        where = "" if path.is_absolute() else ", or run the command from a folder you can write"
        what = "written" if existing == path else "made"
        return (f"{key}: the folder {path} cannot be {what}, as {os.path.abspath(existing)} cannot be written by "
                f"this user ({why}); set {name}= to a folder you can write{where}")
    return None

