"""A command's record in its run folder, written only once the command has decided to run there.

Hydra writes `.hydra/` and opens `<command>.log` in the run folder before the command has looked at anything, so a
command refused at once (a second `train.py` into a running run's folder, a run folder that already holds a run)
would still rewrite that folder's saved config and add its refusal to the log. The train, evaluate and predict
configs therefore turn both off (`hydra.output_subdir: null`, `hydra/job_logging: record`: the console only), and
`Record` does the same work later: the log lines are held in memory until the command calls `keep(folder)` (then
`<command>.log` is appended to and `.hydra/` written where none is), and a command that never keeps its record
leaves the folder as it found it: the empty folder Hydra made for it is removed.
"""

import logging
import logging.handlers
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's own file format


class Record:
    """The log lines and saved config of one command run, held until `keep` names the folder they belong in."""

    def __init__(self, cfg: DictConfig, started: float) -> None:
        job = HydraConfig.get()
        self.cfg, self.name, self.started = cfg, job.job.name, started
        self.made = Path(job.runtime.output_dir)  # the run folder Hydra made (or found) for this command
        self.hydra_cfg, self.overrides = OmegaConf.create({"hydra": job}), list(job.overrides.task)
        self.buffer = logging.handlers.MemoryHandler(capacity=10**6, flushLevel=logging.CRITICAL + 1)
        self.buffer.setLevel(logging.INFO)
        logging.getLogger().addHandler(self.buffer)
        self.handler: logging.FileHandler | None = None  # <folder>/<command>.log, once kept

    def keep(self, folder: str | Path) -> None:
        """Log to `folder`/<command>.log (appended, with the lines logged so far) and save the command's config in
        `folder`/.hydra unless the folder holds one (a resumed run keeps the config it started with)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(folder / f"{self.name}.log", mode="a")
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.setLevel(logging.INFO)
        self.buffer.setTarget(handler)
        self.buffer.flush()
        root = logging.getLogger()
        root.removeHandler(self.buffer)
        root.addHandler(handler)
        self.handler = handler
        saved = folder / ".hydra"
        if not saved.exists():
            saved.mkdir()
            OmegaConf.save(self.cfg, saved / "config.yaml")
            OmegaConf.save(self.hydra_cfg, saved / "hydra.yaml")
            OmegaConf.save(OmegaConf.create(self.overrides), saved / "overrides.yaml")
        if folder.resolve() != self.made.resolve():
            self._remove_made()

    def close(self) -> None:
        """The command has ended: drop lines never kept, and the folder Hydra made if nothing went into it."""
        root = logging.getLogger()
        if self.buffer in root.handlers:
            root.removeHandler(self.buffer)
        self.buffer.buffer.clear()
        if self.handler is None:
            self._remove_made()
        else:
            self.handler.close()
            root.removeHandler(self.handler)

    def _remove_made(self) -> None:
        """Remove the run folder Hydra made for this command when it is still empty and new (made since the command
        started): a folder the user had is left alone, even an empty one."""
        try:
            if not any(self.made.iterdir()) and self.made.stat().st_mtime >= self.started - 1:
                self.made.rmdir()
        except OSError:
            pass
