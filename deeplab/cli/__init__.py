"""The commands: thin Hydra entry points over the library, the top layer of the package.

Each module here reads its config, checks the command's own settings, calls the library and prints; nothing in the
library imports from here. `train.py`, `evaluate.py` and `predict.py` at the top level (`python -m deeplab.train`,
`.evaluate`, `.predict` once installed) and `python -m deeplab.export`, `python -m deeplab.bench` and
`python -m deeplab.data.check` run these. `command` wraps each in Hydra's main, after the check of its command line
(deeplab.cli.command_line), in the run folder it makes for itself (deeplab.cli.run_dirs).
"""

import contextlib
import functools
import logging
import sys
import time
from collections.abc import Callable, Mapping

import hydra
import torch
from omegaconf import DictConfig

from deeplab.cli.command_line import CONFIGS, hydra_args, shows_only, unknown_override
from deeplab.cli.record import Record
from deeplab.cli.run_dirs import making_run_dirs
from deeplab.errors import UserError, user_errors
from deeplab.schema import checked

def typed_settings(cfg: DictConfig, hints: Mapping) -> None:
    """A command's own keys (`hints`: {key: type hint with its range rule}) checked by their schema before anything
    is read, and replaced in `cfg` by their typed values; a wrong one is a ConfigError naming it."""
    for key, value in checked("", {k: cfg[k] for k in hints if k in cfg}, hints).items():
        cfg[key] = value


# what each command can lower when the GPU runs out of memory (the trainer words its own, with what it saved)
OUT_OF_MEMORY = {
    "train": "lower trainer.batch_size (trainer.grad_accum=2 keeps the global batch) or augment.crop_size",
    "evaluate": "evaluate large images with window=[1024,1024] (sliding window), fewer scales, or device=cpu",
    "predict": "predict with batch_size=1, and window=[1024,1024] for large photos, or device=cpu",
    "export": "export with device=cpu", "bench": "bench with a smaller batch or size, or device=cpu",
}


# what a command leaves when Ctrl-C stops it (training words its own: what it saved, and how to resume)
INTERRUPTED = {
    "predict": "every output written before it is whole (each is written to a temp file and renamed; a video's "
               "overlay holds the frames done, and areas.csv the images and frames done); to finish, run the same "
               "command with overwrite=true, or predict into another output=DIR",
    "evaluate": "metrics.json is written only once every image is scored", "bench": "no JSON was written",
    "export": "the export is written whole or not at all", "convert": "the checkpoint is written whole or not at all",
    "train": "stopped before training began; nothing of a run was written",
    "annotations": "the dataset is put in place whole once every image is done; before that, nothing is written",
}


def command(config_name: str, logger: str, *, record: bool = False) -> Callable:
    """hydra.main for a command of configs/<config_name>.yaml, its body run inside `user_errors(logger)` (a user's
    mistake: one sentence, exit 1), after one check of the command line that Hydra words less helpfully: an unknown
    key or group option ends the command in one sentence with the closest one. `record`: the body is called as
    body(cfg, record) and keeps its log and saved config in its run folder with `record.keep(folder)` once it has
    decided to run there (deeplab.cli.record); a command that stops before leaves that folder as it was."""
    def decorate(body: Callable) -> Callable:
        started = time.time()

        @functools.wraps(body)
        def guarded(cfg: DictConfig):
            kept = Record(cfg, started) if record else None
            try:
                with user_errors(logger):  # the error's sentence goes into the record too, once it is kept
                    try:
                        return body(cfg, kept) if record else body(cfg)
                    except KeyboardInterrupt:  # Ctrl-C: one line saying what was left, not a traceback
                        logging.getLogger(logger).error("interrupted (Ctrl-C): %s", INTERRUPTED.get(
                            config_name, "nothing half-written is left"))
                        sys.exit(130)
                    except torch.cuda.OutOfMemoryError as exc:  # one sentence naming what to lower
                        raise UserError(f"the GPU ran out of memory ({str(exc).splitlines()[0].rstrip('.')}); "
                                        f"{OUT_OF_MEMORY.get(config_name, 'use device=cpu')}") from None
            finally:
                if kept is not None:
                    kept.close()

        hydra_main = hydra.main(version_base="1.3", config_path=CONFIGS, config_name=config_name)(guarded)

        @functools.wraps(body)
        def main():
            nonlocal started
            started = time.time()
            sentence = unknown_override(config_name, sys.argv[1:], writes_run_dir=record)
            if sentence:
                print(sentence, file=sys.stderr)
                sys.exit(1)
            parsed = hydra_args(sys.argv[1:])
            with contextlib.nullcontext() if parsed is None or shows_only(parsed) else making_run_dirs():
                return hydra_main()
        return main
    return decorate
