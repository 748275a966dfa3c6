"""Reading and writing PyTorch files safely: atomic writes that never lose the previous file and say when the disk
is full, and weights-only reads that say in one sentence what an unusable file is."""

import contextlib
import errno
import os
import pickle
import re
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from deeplab.errors import DISK_ERRORS, UserError, exception_chain

LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"
FULL_DISK = {code: DISK_ERRORS[code] for code in (errno.ENOSPC, errno.EDQUOT)}  # the errors a write meets for space


class CheckpointError(UserError):
    """A checkpoint that cannot be used: the message is one sentence naming the file and the problem."""


# what atomic_write's temp file (".<name>.<pid>.XXXXXXXX.tmp") adds to a name, a pid of up to 7 digits counted
TEMP_NAME_EXTRA = len(".") + len(".1234567.XXXXXXXX.tmp")


def name_limits(folder: Path) -> tuple[int, int]:
    """The file system's longest name and path in bytes at `folder`, an existing folder (os.pathconf's NAME_MAX and
    PATH_MAX; Linux's 255 and 4096 where the system does not say)."""
    def limit(name: str, default: int) -> int:
        try:
            return os.pathconf(folder, name)
        except (OSError, ValueError):
            return default
    return limit("PC_NAME_MAX", 255), limit("PC_PATH_MAX", 4096)


def atomic_write(path: str | Path, write: Callable[[Path], None], *, size_hint: int = 0, durable: bool = True,
                 then: str = "run the command again", sweep: bool = True, replace: bool = True) -> Path:
    """Have `write` fill a temp file in the same folder, fsync it, then os.replace it onto `path`.

    A crash or a kill mid-write leaves the previous file intact; the temp file a kill leaves behind
    (`.<name>.<pid>.XXXXXXXX.tmp`) is removed by the next write of `path` once its process has ended (another
    process's write in progress is left alone). The file gets the permissions a new file would
    (0666 less the umask), not mkstemp's owner-only 0600. A write that fails for lack of space raises a
    CheckpointError giving the free space and about what is needed (`size_hint` bytes, or the previous file's size).
    durable=False skips the fsync, for files that can be made again (cached masks): readers still never see half.
    `then`: what to do once there is room, the end of that sentence (a training run: continue it with resume=...).
    sweep=False skips the search for a killed write's temp files (a folder of thousands of outputs: predict).
    replace=False: the file is put in place only if `path` still does not exist (a hard link, which fails on an
    existing name): another process that wrote it while this one ran keeps its file, and this write is refused.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if sweep:
        remove_stale_temp_files(path)
    tmp = temp_file(path)
    try:
        write(Path(tmp))
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            _link_new(Path(tmp), path)
    except BaseException as exc:
        written = Path(tmp).stat().st_size if Path(tmp).is_file() else 0
        Path(tmp).unlink(missing_ok=True)
        needed = max(size_hint, written, path.stat().st_size if path.is_file() else 0)
        full = isinstance(exc, Exception) and _disk_full_message(path, exc, needed=needed, then=then)
        if full:
            raise CheckpointError(full) from exc
        raise
    return path


def temp_file(path: Path, *, suffix: str = "") -> Path:
    """A new empty file beside `path` to write it through, `.<name>.<pid>.XXXXXXXX.tmp` (the name
    `remove_stale_temp_files` knows), its folder made, with the permissions a new file would get (0666 less the
    umask), not mkstemp's owner-only 0600. `suffix`: an extension after .tmp for a writer that picks its format by
    the name (OpenCV's video writer: .mp4)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return Path(tmp)


def _link_new(tmp: Path, path: Path) -> None:
    """Put `tmp` in place at `path` only if no file is there (on a file system without hard links: checked, then
    renamed)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise UserError(f"{path}: another process wrote this file while this command ran, and it is kept; write to "
                        f"another file, or run again with overwrite=true to replace it") from None
    except OSError:  # no hard links here (FAT, some network file systems)
        if path.exists():
            raise UserError(f"{path}: another process wrote this file while this command ran, and it is kept; write "
                            f"to another file, or run again with overwrite=true to replace it") from None
        os.replace(tmp, path)
    tmp.unlink(missing_ok=True)


def output_file_problem(path: Path, *, source: Path | None, overwrite: bool, example: str) -> str | None:
    """The rule every command that writes one file from another keeps (export, convert): never over its source,
    never over a folder, over another existing file only with overwrite=true. The sentence saying what is wrong with
    `path` as that output (`example`: a file name to suggest), or None."""
    if source is not None and path.exists() and source.exists() and path.resolve() == source.resolve():
        return (f"output={path} is the source file itself, which is never replaced; choose another output=FILE "
                f"(e.g. {example})")
    if path.is_dir():
        return f"output={path} is a folder; give a file name, e.g. output={path / example}"
    if path.exists() and not overwrite:
        return f"{path} exists; choose another output=FILE or set overwrite=true"
    return None


def remove_stale_temp_files(path: Path, *, every_name: bool = False) -> list[Path]:
    """Remove the temp files (`.<name>.<pid>.XXXXXXXX.tmp`, `temp_file`'s, with the extension a video writer needs
    after it) that a killed write of `path` left beside it: those of processes that no longer run, and this process's
    own (it writes one file at a time). every_name: those of any file in the folder `path` (once, before writing many
    files there with sweep=False)."""
    name, folder = (r".+", path) if every_name else (re.escape(path.name), path.parent)
    pattern = re.compile(rf"\.{name}\.(\d+)\.[a-z0-9_]{{8}}\.tmp(\.[a-z0-9]{{1,5}})?")
    stale = [p for p in folder.iterdir() if (match := pattern.fullmatch(p.name)) and p.is_file()
             and (int(match.group(1)) == os.getpid() or not process_running(int(match.group(1))))]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def process_running(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def folder_lock(folder: Path, *, name: str, busy: str) -> Iterator[None]:
    """Hold `folder`/`name` (holding this process's id) while a command writes into `folder`: a second process that
    would write there at the same time is refused with "<folder>: <busy>" instead of mixing its files with the
    first's. A lock whose process has ended (killed) is taken over. Folders made for the lock are removed again if
    the command leaves them empty (a refused command leaves no folder behind)."""
    lock = folder / name
    made = [p for p in [folder, *folder.parents] if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                holder = int(lock.read_text().strip() or "0") or None
            except (OSError, ValueError):
                holder = None
            if holder is not None and holder != os.getpid() and process_running(holder):
                raise UserError(f"{folder}: another process (pid {holder}) is writing into it; {busy}") from None
            lock.unlink(missing_ok=True)  # left by a process that has ended
    else:
        raise UserError(f"{lock}: cannot take this folder's lock; remove it if no process writes into {folder}")
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        for path in made:  # innermost first
            try:
                path.rmdir()
            except OSError:  # it holds what the command wrote
                break


def _disk_full_message(path: Path, exc: BaseException, *, needed: int, then: str) -> str | None:
    """One sentence if `exc` is a write that failed for lack of space, else None.

    torch.save reports a failed write as a RuntimeError ("PytorchStreamWriter failed writing file ...") without
    the errno, so besides ENOSPC/EDQUOT anywhere in the chain, a failed write with less space free than it needs
    counts as a full disk.
    """
    code = next((e.errno for e in exception_chain(exc) if isinstance(e, OSError) and e.errno in FULL_DISK), None)
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if code is None:
        if not isinstance(exc, (OSError, RuntimeError)) or free is None or free >= needed + 2**20:
            return None
        code = errno.ENOSPC
    kept = f"; the previous {path.name} is intact" if path.is_file() else ""
    room = f"{_human(free)} free in {path.parent}" if free is not None else f"free space in {path.parent} unknown"
    return (f"{path}: cannot write it, {FULL_DISK[code]} ({room}, about {_human(needed)} needed){kept}; free "
            f"space or write to another folder, then {then}")


def _human(size: int) -> str:
    """A byte count as the user reads it: 5.0 kB, 4.9 MB, 1.2 GB."""
    for factor, unit in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} bytes"


def tensor_bytes(state: object) -> int:
    """Bytes of the tensors in a nested state (dicts, lists, tuples): about what torch.save will write."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(tensor_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(tensor_bytes(v) for v in state)
    return 0


def read_torch_file(path: str | Path, *, map_location: str | torch.device = "cpu", mmap: bool = False) -> object:
    """torch.load(weights_only=True) of `path`: a stranger's pickled code never runs, and a file that cannot be
    loaded gets one sentence saying what it is (missing, a folder, empty, a git-LFS pointer, text, ONNX, truncated,
    refused pickled objects). `mmap`: the tensors are mapped, not read (a look at a zip checkpoint's other keys)."""
    path = Path(path).expanduser()
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.pt"))
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file; pass the file itself, e.g. "
                              f"{path / inside[0]}" if inside else f"{path}: is a folder, not a checkpoint file, "
                              "and holds no .pt file; pass the last.pt or best.pt of a training run")
    if not path.is_file():
        near = sorted(p.name for p in path.parent.glob("*.pt")) if path.parent.is_dir() else []
        hint = f" ({path.parent} holds {', '.join(near[:3])})" if near else ""
        raise CheckpointError(f"{path}: no such checkpoint file{hint}; check the path (a training run writes "
                              "last.pt and best.pt in its run folder)")
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc}); check its permissions") from exc
    kind = _file_kind(path, head)
    if kind not in ("zip", "pickle"):
        raise CheckpointError(f"{path}: {_not_torch(kind, head)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's note on pickle protocols is no use to the user
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap and kind == "zip")
    except pickle.UnpicklingError as exc:
        if "Weights only" not in str(exc):  # a plain unpickling failure: the pickle stream is damaged
            raise _damaged(path, kind) from exc
        # weights_only met something other than tensors and plain containers: a class, a function, numpy arrays
        wanted = re.search(r"GLOBAL ([\w.]+)", " ".join(str(e) for e in exception_chain(exc)))
        what = f" (it asks for {wanted.group(1)})" if wanted else ""
        raise CheckpointError(f"{path}: refused: it holds code or objects other than tensors{what}, and deeplab "
                              f"loads with weights_only=True and never unpickles code; use a checkpoint written by "
                              f"train.py, or re-save only its tensors with torch.save where you trust the file"
                              ) from exc
    except Exception as exc:  # a zip cut short (no central directory), a pickle cut short (EOFError), bad records
        raise _damaged(path, kind) from exc


def _damaged(path: Path, kind: str) -> CheckpointError:
    name = "zip archive" if kind == "zip" else "pickle file"
    return CheckpointError(f"{path}: truncated or corrupt PyTorch {name} ({path.stat().st_size} bytes): the write "
                           f"or copy was cut short; copy it again or use another checkpoint (e.g. best.pt or last.pt "
                           f"beside it)")


def is_torch_file(path: str | Path) -> bool:
    """Whether a file is one torch.save wrote (a zip holding data.pkl, or a pickle), or a damaged one of those."""
    with open(path, "rb") as f:
        return _file_kind(Path(path), f.read(512)) in ("zip", "pickle")


def _file_kind(path: Path, head: bytes) -> str:
    """What the first bytes of a file say it is: zip, pickle (both torch.save's), or empty, lfs, pt2, other-zip,
    onnx, text, unknown."""
    if not head:
        return "empty"
    if head.startswith(LFS_POINTER):
        return "lfs"
    if head.startswith(b"PK\x03\x04"):  # zip (torch.save's, or too damaged to tell), pt2 (torch.export's) or other
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return "zip"  # cut short: torch.load says so, and so will we
        if any(name.endswith("/archive_format") for name in names):
            return "pt2"
        return "zip" if any(name.endswith("data.pkl") for name in names) else "other-zip"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    if path.suffix.lower() == ".onnx" or (head[:1] == b"\x08" and b"pytorch" in head[:32]):
        return "onnx"
    text = head.decode(errors="replace").rstrip("\ufffd")  # the 512 bytes may end inside a character
    return "text" if all(c.isprintable() or c.isspace() for c in text) else "unknown"


def _not_torch(kind: str, head: bytes) -> str:
    """What a file that torch.load cannot read is, and the fix."""
    if kind == "empty":
        return ("empty file (0 bytes), not a checkpoint: its write or copy was cut short; copy it again or use "
                "another checkpoint (e.g. best.pt or last.pt beside it)")
    if kind == "lfs":
        return ("a git-LFS pointer (a small text file that stands for the checkpoint), not the checkpoint itself; "
                "run `git lfs pull` in its repository to fetch the real file")
    if kind == "pt2":
        return ("a torch.export program (python -m deeplab.export format=pt2), not a training checkpoint; load it "
                "with torch.export.load, and pass the .pt it was exported from as checkpoint=")
    if kind == "onnx":
        return ("an ONNX model, not a training checkpoint; pass it as onnx=FILE together with checkpoint=<the .pt "
                "it was exported from>")
    if kind == "other-zip":
        return ("a zip archive but not one torch.save wrote (it has no data.pkl); pass a last.pt or best.pt "
                "written by train.py")
    if kind == "text":
        first = head.decode(errors="replace").strip().splitlines()[0][:60]
        return (f"a text file (it starts {first!r}), not a checkpoint: a download that saved a web page or an "
                "error message? Fetch the real .pt file again")
    return (f"not a PyTorch file (neither torch.save's zip archive nor a pickle; it starts with bytes "
            f"{head[:8].hex(' ')}); pass a last.pt or best.pt written by train.py")
