"""The commands: thin Hydra entry points over the library, the top layer of the package.

Each module here reads its config, checks the command's own settings, calls the library and prints; nothing in the
library imports from here. `train.py`, `evaluate.py` and `predict.py` at the top level and `python -m deeplab.export`,
`python -m deeplab.bench` and `python -m deeplab.data.check` run these.

`--help` prints the command's page from `configs/hydra/help/<command>.yaml` (chosen in its config's defaults list);
its list of config groups comes from `${deeplab.config_groups:}` below, not from Hydra's $APP_CONFIG_GROUPS, which
lists every group under configs/ (the training groups on predict.py's page too).
"""

import difflib
import functools
import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import hydra
import torch
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from deeplab.cli.record import Record
from deeplab.errors import UserError, user_errors
from deeplab.schema import checked

CONFIGS = str(Path(__file__).resolve().parents[2] / "configs")  # absolute: Hydra reads it as a folder

# keys an older version read, and where they live now
RENAMED = {"model.width_mult": "model.backbone.width_mult", "model.expand_ratio": "model.backbone.expand_ratio"}

def group_options(group: str) -> list[str]:
    """The options of a config group: the stems of configs/<group>/*.yaml, sorted."""
    return sorted(p.stem for p in (Path(CONFIGS) / group).glob("*.yaml"))


def typed_settings(cfg: DictConfig, hints: Mapping) -> None:
    """A command's own keys (`hints`: {key: type hint with its range rule}) checked by their schema before anything
    is read, and replaced in `cfg` by their typed values; a wrong one is a ConfigError naming it."""
    for key, value in checked("", {k: cfg[k] for k in hints if k in cfg}, hints).items():
        cfg[key] = value


# groups another command composes only because a dataset config may choose them for training (dataset/demo.yaml
# chooses the optimizer): left off that command's --help
TRAINING_GROUPS = ("optim",)


def config_groups(*, _root_: DictConfig) -> str:
    """The config groups this command's config composes (its defaults list, with the command line's choices), one
    line each: `group: option, option*, ...`, the option in use starred; read from configs/<group>/*.yaml."""
    choices, name = _root_.hydra.runtime.choices, _root_.hydra.job.config_name
    lines = []
    for group in sorted(g for g in choices if g != "hydra" and not g.startswith("hydra/")
                        and (name == "train" or g not in TRAINING_GROUPS)):
        options = group_options(group)
        chosen = choices[group]
        lines.append(f"{group}: " + ", ".join(f"{o}*" if o == chosen else o for o in options)
                     + ("  (none in use)" if chosen is None else ""))
    return "\n".join(lines) or "(none: every setting is a key=value of the config)"


OmegaConf.register_new_resolver("deeplab.config_groups", config_groups, replace=True)


def _compose(config_name: str, overrides: Sequence[str], *, hydra_config: bool = False) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose(config_name, overrides=list(overrides), return_hydra_config=hydra_config)


def _missing_option(group: str, option: str) -> str:
    """`optim=sdg`: the group's options, the closest first."""
    options = group_options(group)
    close = next(iter(difflib.get_close_matches(option, options, n=1)), None)
    return (f"{group}={option}: configs/{group}/ has no option {option}; "
            + (f"did you mean {group}={close}? " if close else "") + f"(its options: {', '.join(options)})")


def _missing_key(config_name: str, args: Sequence[str], override: str) -> str:
    """`trainer.iteration=5`: the closest key at the first level the config lacks, or that level's keys."""
    key, _, value = override.partition("=")
    if key in RENAMED:
        return f"{override}: {key} is now {RENAMED[key]}; write {RENAMED[key]}={value}"
    try:
        node = _compose(config_name, [a for a in args if a != override])
    except Exception:  # noqa: BLE001 - another override fails too: name this one without a suggestion
        node = None
    parts, known = key.split("."), []
    for part in parts[:-1]:  # down to the first part the config lacks
        if not isinstance(node, DictConfig) or part not in node:
            break
        node, known = node[part], [*known, part]
    missing, keys = parts[len(known)], list(node.keys()) if isinstance(node, DictConfig) else []
    close = next(iter(difflib.get_close_matches(missing, keys, n=1)), None)
    if close:
        fix = f"did you mean {'.'.join([*known, close, *parts[len(known) + 1:]])}={value}?"
    elif keys:
        fix = f"{'.'.join(known) or 'its top level'} holds {', '.join(map(str, keys))}"
    else:
        fix = "check the spelling"
    return (f"{override}: configs/{config_name}.yaml and its groups have no key {'.'.join([*known, missing])}; "
            f"{fix} (--cfg job prints every key)")


def _readable_unquoted(parser: OverridesParser, char: str) -> bool:
    try:
        parser.parse_override(f"k=a{char}b")
        return True
    except HydraException:
        return False


def grammar_problem(args: Sequence[str]) -> str | None:
    """One sentence for an argument Hydra's override grammar cannot read as the user meant: a value holding one of
    its special characters unquoted (a path with [ ] ~ or a comma: a comma reads as a sweep of several runs)."""
    parser = OverridesParser.create()
    multirun = any(arg in ("-m", "--multirun") for arg in args)
    if any(arg.startswith("-") and arg not in ("-m", "--multirun") for arg in args):
        return None  # Hydra's other flags (--cfg job, --help, -cn NAME...) take words that are not overrides
    for arg in (a for a in args if not a.startswith("-")):
        key, _, value = arg.partition("=")
        quoted, shell = (f"{key}='{value}'", f"\"{key}='{value}'\"") if "'" not in value else \
            (f'{key}="{value}"', f'"{key}=\\"{value}\\""')
        try:
            override = parser.parse_override(arg)
        except HydraException:
            unread = sorted({c for c in value if not _readable_unquoted(parser, c)})
            what = ", ".join(repr(c) for c in unread) or "this value"
            return (f"{arg}: Hydra cannot read {what} unquoted in a value (letters outside ASCII and "
                    f"characters such as [ ] , ~ # ; ' = are special or unknown to its overrides); quote the value "
                    f"inside the argument: {quoted} (in a shell, {shell})")
        if override.is_sweep_override() and not multirun:
            return (f"{arg}: the comma makes Hydra read several values, a sweep of runs (that needs -m); quote a "
                    f"value that holds a comma: {quoted} (in a shell, \"{quoted}\"), or give a list as {key}=[...]")
    return None


def run_dir_problem(cfg: DictConfig, args: Sequence[str]) -> str | None:
    """One sentence when the run folder Hydra would make is a file or lies under one (Hydra's own error is a
    traceback), naming the key that sets it: hydra.run.dir, or output_root that it is made under."""
    try:
        given = str(cfg.hydra.run.dir)
    except Exception:  # noqa: BLE001 - a value only Hydra's own run can resolve: its check
        return None
    named = any(a.partition("=")[0].lstrip("+") == "hydra.run.dir" for a in args)
    key = f"hydra.run.dir={given}" if named or "output_root" not in cfg else f"output_root={cfg.output_root}"
    run_dir = Path(given).expanduser()
    if given.startswith("~"):  # Hydra makes the folder as written: one named "~" here, a trap for `rm -rf ~`
        return (f"{key}: Hydra does not expand ~ in its run folder and would make a folder named '~' here; write "
                f"the full path, e.g. {key.partition('=')[0]}={Path(key.partition('=')[2]).expanduser()}")
    blocking = next((p for p in [run_dir, *run_dir.parents] if p.exists() and not p.is_dir()), None)
    if blocking is None:
        return None
    return f"{key}: {blocking} is a file, not a folder, so the run folder {run_dir} cannot be made; choose a folder"


def interpolation_problem(cfg: DictConfig, args: Sequence[str]) -> str | None:
    """One sentence for an override whose value refers to ${...} that the config cannot resolve (often a literal $
    in a path)."""
    for arg in args:
        key = arg.partition("=")[0].lstrip("+")
        if "${" not in arg or key.startswith("hydra"):
            continue
        try:
            node = OmegaConf.select(cfg, key)
            if isinstance(node, (DictConfig, ListConfig)):
                OmegaConf.to_container(node, resolve=True)
        except OmegaConfBaseException as exc:
            reason = str(exc).splitlines()[0]
            return (f"{arg}: the value refers to ${{...}}, which the config cannot resolve ({reason}); a $ meant "
                    f"literally is written \\$, e.g. {key}='\\${{...}}'")
    return None


def unknown_override(config_name: str, args: Sequence[str]) -> str | None:
    """One sentence for a command line that Hydra would answer with a traceback or a less helpful message: a key the
    config lacks (`trainer.iteration=5`, the old `model.width_mult=0.5`) or a group option that does not exist
    (`optim=sdg`), with the closest existing one; a value its grammar cannot read, an unresolvable ${...}, a run
    folder that cannot be made. None when the overrides compose, or fail otherwise (Hydra then reports it, as for
    flags such as --help and -m, and for its own hydra.* keys)."""
    problem = grammar_problem(args)
    if problem or any(arg.startswith("-") for arg in args):
        return problem
    try:  # one composition when the command line is sound; the configs say why when it is not
        cfg = _compose(config_name, args, hydra_config=True)
    except Exception:  # noqa: BLE001 - what missing_problem cannot name, the Hydra main that follows reports
        return missing_problem(config_name, args)
    return interpolation_problem(cfg, args) or run_dir_problem(cfg, args)


def missing_problem(config_name: str, args: Sequence[str]) -> str | None:
    """A group option that configs/<group>/ lacks, or a key the composed config lacks, found from the configs
    themselves (the group folders, and the config composed with the command line's group choices), never from the
    wording of Hydra's errors."""
    overrides = OverridesParser.create().parse_overrides(list(args))
    changes = [(o, arg) for o, arg in zip(overrides, args)
               if o.type == OverrideType.CHANGE and not o.key_or_group.startswith("hydra")]
    chosen = [arg for o, arg in changes if (Path(CONFIGS) / o.key_or_group).is_dir()]
    for o, arg in changes:
        if arg in chosen and str(o.value()) not in group_options(o.key_or_group):
            return _missing_option(o.key_or_group, str(o.value()))
    try:
        base = _compose(config_name, [*chosen, *(a for o, a in zip(overrides, args) if a not in
                                                 {arg for _, arg in changes})])
    except Exception:  # noqa: BLE001 - not ours to word: the Hydra main that follows reports it
        return None
    for o, arg in changes:
        if arg not in chosen and OmegaConf.select(base, o.key_or_group, default=_ABSENT) is _ABSENT:
            return _missing_key(config_name, args, arg)
    return None


_ABSENT = object()


# what each command can lower when the GPU runs out of memory (the trainer words its own, with what it saved)
OUT_OF_MEMORY = {
    "train": "lower trainer.batch_size (trainer.grad_accum=2 keeps the global batch) or augment.crop_size",
    "evaluate": "evaluate large images with window=[1024,1024] (sliding window), fewer scales, or device=cpu",
    "predict": "predict with batch_size=1, and window=[1024,1024] for large photos, or device=cpu",
    "export": "export with device=cpu", "bench": "bench with a smaller batch or size, or device=cpu",
}


# what a command leaves when Ctrl-C stops it (training words its own: what it saved, and how to resume)
INTERRUPTED = {
    "predict": "every output written before it is whole (each is written to a temp file and renamed); to finish, "
               "run the same command with overwrite=true, or predict into another output=DIR",
    "evaluate": "metrics.json is written only once every image is scored", "bench": "no JSON was written",
    "export": "the export is written whole or not at all", "convert": "the checkpoint is written whole or not at all",
    "train": "stopped before training began; nothing of a run was written",
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
            sentence = unknown_override(config_name, sys.argv[1:])
            if sentence:
                print(sentence, file=sys.stderr)
                sys.exit(1)
            return hydra_main()
        return main
    return decorate
