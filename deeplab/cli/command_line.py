"""The command line, checked before Hydra's main sees it, over the config sources that main reads.

The configs are the package's (deeplab/configs once installed) or the checkout's configs/, plus the user's own
folders (--config-dir, hydra.searchpath). A key the config lacks, a group option no source has, a value Hydra's
grammar cannot read, a config file that is not YAML, a run folder that cannot be made: one sentence each, with the
closest existing key or option, where Hydra would answer with a traceback or a less helpful message.

`--help` prints the command's page from `configs/hydra/help/<command>.yaml` (chosen in its config's defaults list);
its list of config groups comes from `${deeplab.config_groups:}` below, not from Hydra's $APP_CONFIG_GROUPS, which
lists every group under configs/ (the training groups on predict.py's page too).
"""

import argparse
import contextlib
import difflib
import io
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import yaml
from hydra import compose, version
from hydra._internal.hydra import Hydra
from hydra._internal.utils import create_config_search_path, get_args_parser
from hydra.core.config_search_path import SearchPathQuery
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from hydra.errors import HydraException
from hydra.initialize import get_gh_backup, restore_gh_from_backup
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from deeplab.cli.run_dirs import run_dir_problem
from deeplab.errors import exception_chain

def config_folder(package: Path) -> Path:
    """The configs of the deeplab package at `package`: installed, its own deeplab/configs (pyproject.toml puts the
    checkout's configs/ there in the wheel); in a checkout (an editable install, or the checkout on sys.path), the
    top-level configs/ beside it, the one users edit."""
    return next((p for p in (package / "configs", package.parent / "configs") if p.is_dir()), package / "configs")


# absolute: Hydra reads it from any folder
CONFIGS = str(config_folder(Path(__file__).resolve().parents[1]))

# keys an older version read, and where they live now
RENAMED = {"model.width_mult": "model.backbone.width_mult", "model.expand_ratio": "model.backbone.expand_ratio"}


def group_options(group: str, config_name: str | None = None, overrides: Sequence[str] = ()) -> list[str]:
    """The options of a config group in every config source of the Hydra set up now: configs/, a --config-dir, and
    the hydra.searchpath folders of `overrides` (or of the config `config_name`), sorted."""
    loader = GlobalHydra.instance().config_loader()
    return sorted(loader.get_group_options(group, config_name=config_name, overrides=list(overrides)))


@contextlib.contextmanager
def config_sources(config_dir: str | None = None) -> Iterator[None]:
    """Hydra set up over the config sources a command's main reads, as hydra.main sets them up: configs/, then the
    user's --config-dir (`config_dir`); a hydra.searchpath=[...] override is read by Hydra's loader itself. What
    was set up before is restored on leaving."""
    backup = get_gh_backup()
    version.setbase("1.3")
    try:
        search_path = create_config_search_path(CONFIGS)
        if config_dir:
            search_path.prepend(provider="command-line", path=f"file://{os.path.abspath(config_dir)}",
                                anchor=SearchPathQuery(provider="schema"))
        Hydra.create_main_hydra2(task_name="deeplab", config_search_path=search_path)
        yield
    finally:
        restore_gh_from_backup(backup)


def hydra_args(argv: Sequence[str]) -> argparse.Namespace | None:
    """The command line as Hydra's main reads it (its flags, --config-dir, --config-name, the overrides); None when
    Hydra's parser refuses it (the main that follows says why)."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            return get_args_parser().parse_args(list(argv))
    except SystemExit:
        return None


# groups another command composes only because a dataset config may choose them for training (dataset/demo.yaml
# chooses the optimizer): left off that command's --help
TRAINING_GROUPS = ("optim",)


def config_groups(*, _root_: DictConfig) -> str:
    """The config groups this command's config composes (its defaults list, with the command line's choices), one
    line each: `group: option, option*, ...`, the option in use starred; read from configs/<group>/*.yaml."""
    choices, name = _root_.hydra.runtime.choices, _root_.hydra.job.config_name
    overrides = [*_root_.hydra.overrides.hydra, *_root_.hydra.overrides.task]  # hydra.searchpath=[...] among them
    lines = []
    for group in sorted(g for g in choices if g != "hydra" and not g.startswith("hydra/")
                        and (name == "train" or g not in TRAINING_GROUPS)):
        options = group_options(group, name, overrides)
        chosen = choices[group]
        lines.append(f"{group}: " + ", ".join(f"{o}*" if o == chosen else o for o in options)
                     + ("  (none in use)" if chosen is None else ""))
    return "\n".join(lines) or "(none: every setting is a key=value of the config)"


OmegaConf.register_new_resolver("deeplab.config_groups", config_groups, replace=True)


def _compose(config_name: str, overrides: Sequence[str], *, hydra_config: bool = False) -> DictConfig:
    """The config as the command's main composes it, in `config_sources`."""
    return compose(config_name, overrides=list(overrides), return_hydra_config=hydra_config)


def _missing_option(group: str, option: str, config_name: str, args: Sequence[str]) -> str:
    """`optim=sdg`: the group's options in every config source, the closest first."""
    options = group_options(group, config_name, args)
    close = next(iter(difflib.get_close_matches(option, options, n=1)), None)
    added = any(s.provider == "command-line" for s in GlobalHydra.instance().config_loader().get_sources()) or \
        any(a.partition("=")[0].lstrip("+") == "hydra.searchpath" for a in args)  # --config-dir, hydra.searchpath
    return (f"{group}={option}: configs/{group}/{' and your config folders have' if added else ' has'} no option "
            f"{option}; " + (f"did you mean {group}={close}? " if close else "")
            + f"(its options: {', '.join(options)})")


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
    where = f"configs/{config_name}.yaml" if (Path(CONFIGS) / f"{config_name}.yaml").is_file() else \
        f"{config_name}.yaml (--config-name)"  # a primary config of the user's own folder
    return (f"{override}: {where} and its groups have no key {'.'.join([*known, missing])}; {fix} (--cfg job prints "
            f"every key)")


def _readable_unquoted(parser: OverridesParser, char: str) -> bool:
    try:
        parser.parse_override(f"k=a{char}b")
        return True
    except HydraException:
        return False


def grammar_problem(args: Sequence[str], *, multirun: bool = False) -> str | None:
    """One sentence for an override Hydra's grammar cannot read as the user meant: a value holding one of its special
    characters unquoted (a path with [ ] ~ or a comma: a comma reads as a sweep of several runs, unless `multirun`)."""
    parser = OverridesParser.create()
    for arg in args:
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


def unknown_override(config_name: str, args: Sequence[str], *, writes_run_dir: bool = True) -> str | None:
    """One sentence for a command line that Hydra would answer with a traceback or a less helpful message: a key the
    config lacks (`trainer.iteration=5`, the old `model.width_mult=0.5`) or a group option that no config source has
    (`optim=sdg`), with the closest existing one; a value its grammar cannot read, an unresolvable ${...}, a run
    folder (a sweep's folder, with -m) that cannot be made, or not written where `writes_run_dir`. None when the
    overrides compose, or fail otherwise (Hydra then reports it, as for flags such as --help, a sweep's values, and
    its own hydra.* keys)."""
    parsed = hydra_args(args)
    if parsed is None:
        return None
    problem = grammar_problem(parsed.overrides, multirun=parsed.multirun)
    if problem or shows_only(parsed) or parsed.config_path is not None or \
            (parsed.config_dir and not os.path.isdir(parsed.config_dir)):
        return problem  # --help, --cfg..., and a config folder Hydra cannot find: Hydra's own
    config_name, args = parsed.config_name or config_name, parsed.overrides
    with config_sources(parsed.config_dir):
        if parsed.multirun:  # the sweep's folder, from the config without the swept values (each job's: Hydra's)
            sweeps = OverridesParser.create().parse_overrides(list(args))
            try:
                cfg = _compose(config_name, [a for a, o in zip(args, sweeps) if not o.is_sweep_override()],
                               hydra_config=True)
            except Exception as exc:  # noqa: BLE001 - a sweep's own composition: Hydra reports it
                return yaml_problem(exc)
            return run_dir_problem(cfg, args, folder="sweep", writes=writes_run_dir)
        try:  # one composition when the command line is sound; the configs say why when it is not
            cfg = _compose(config_name, args, hydra_config=True)
        except Exception as exc:  # noqa: BLE001 - what these cannot name, the Hydra main that follows reports
            return yaml_problem(exc) or missing_problem(config_name, args)
        return (interpolation_problem(cfg, args) or unread_key(config_name, args)
                or run_dir_problem(cfg, args, writes=writes_run_dir))


def yaml_problem(exc: BaseException) -> str | None:
    """One sentence for a config file that is not valid YAML (Hydra lets the parser's traceback through): the file,
    line and column from the parser's mark."""
    error = next((e for e in exception_chain(exc) if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark), None)
    if error is None:
        return None
    mark = error.problem_mark
    return (f"{mark.name}: not valid YAML at line {mark.line + 1}, column {mark.column + 1} ({error.problem}); "
            f"correct that config file")


def shows_only(parsed: argparse.Namespace) -> bool:
    """Whether Hydra's main only shows something (--help, --cfg, --info...) and runs no command."""
    return bool(parsed.help or parsed.hydra_help or parsed.cfg or parsed.info or parsed.shell_completion)


def missing_problem(config_name: str, args: Sequence[str]) -> str | None:
    """A group option that no config source has, or a key the composed config lacks, found from the configs
    themselves (the options Hydra's loader finds in configs/ and the user's config folders, and the config composed
    with the command line's group choices), never from the wording of Hydra's errors; run in `config_sources`."""
    overrides = OverridesParser.create().parse_overrides(list(args))
    changes = [(o, arg) for o, arg in zip(overrides, args)
               if o.type == OverrideType.CHANGE and not o.key_or_group.startswith("hydra")]
    loader = GlobalHydra.instance().config_loader()
    chosen = [arg for o, arg in changes if loader.get_group_options(o.key_or_group, results_filter=None,
                                                                    config_name=config_name, overrides=list(args))]
    for o, arg in changes:
        if arg in chosen and str(o.value()) not in group_options(o.key_or_group, config_name, args):
            return _missing_option(o.key_or_group, str(o.value()), config_name, args)
    problem = unread_groups(config_name, [(o.key_or_group, arg) for o, arg in changes if arg in chosen])
    if problem:
        return problem
    try:
        base = _compose(config_name, [*chosen, *(a for o, a in zip(overrides, args) if a not in
                                                 {arg for _, arg in changes})])
    except Exception:  # noqa: BLE001 - not ours to word: the Hydra main that follows reports it
        return None
    for o, arg in changes:
        if arg not in chosen and OmegaConf.select(base, o.key_or_group, default=_ABSENT) is _ABSENT:
            return _missing_key(config_name, args, arg)
    return None


def unread_groups(config_name: str, given: Sequence[tuple[str, str]]) -> str | None:
    """`dataset=voc` (or `+dataset=voc`, as Hydra then advises) given to a command whose config composes no dataset
    (predict, export): the command would ignore it; one sentence. `given`: (group, argument) pairs."""
    composed = _compose(config_name, [], hydra_config=True).hydra.runtime.choices
    for group, arg in given:
        if group not in composed:
            groups = ", ".join(sorted(g for g in composed if not g.startswith("hydra"))) or "no config group"
            return (f"{arg}: {config_name} takes no {group} (configs/{config_name}.yaml composes {groups}), so it "
                    f"would be ignored; drop it")
    return None


def unread_key(config_name: str, args: Sequence[str]) -> str | None:
    """`+anything=...` or `+dataset=voc`: a key or group the command's config lacks, added on the command line, which
    nothing would read (Hydra composes it without a word); one sentence. Run in `config_sources`."""
    overrides = OverridesParser.create().parse_overrides(list(args))
    added = [(o, arg) for o, arg in zip(overrides, args) if o.type in (OverrideType.ADD, OverrideType.FORCE_ADD)
             and not o.key_or_group.startswith("hydra")]
    if not added:
        return None
    loader = GlobalHydra.instance().config_loader()
    groups = [(o.key_or_group, arg) for o, arg in added
              if loader.get_group_options(o.key_or_group, results_filter=None)]
    problem = unread_groups(config_name, groups)
    if problem:
        return problem
    try:
        base = _compose(config_name, [a for o, a in zip(overrides, args) if (o, a) not in added])
    except Exception:  # noqa: BLE001 - not ours to word: the Hydra main that follows reports it
        return None
    for o, arg in added:
        top = o.key_or_group.split(".")[0]
        if (o.key_or_group, arg) not in groups and top not in base and not loader.get_group_options(
                top, results_filter=None):
            return (f"{arg}: configs/{config_name}.yaml has no key {top}, and {config_name} reads no key it lacks, so "
                    f"it would be ignored; drop it (--cfg job prints every key)")
    return None


_ABSENT = object()
