"""The commands: thin Hydra entry points over the library, the top layer of the package.

Each module here reads its config, checks the command's own settings, calls the library and prints; nothing in the
library imports from here. `train.py`, `evaluate.py` and `predict.py` at the top level and `python -m deeplab.export`,
`python -m deeplab.bench` and `python -m deeplab.data.check` run these.

`--help` prints the command's page from `configs/hydra/help/<command>.yaml` (chosen in its config's defaults list);
its list of config groups comes from `${deeplab.config_groups:}` below, not from Hydra's $APP_CONFIG_GROUPS, which
lists every group under configs/ (the training groups on predict.py's page too).
"""

from collections.abc import Mapping, Sequence
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from deeplab.errors import ConfigError

CONFIGS = str(Path(__file__).resolve().parents[2] / "configs")  # absolute: Hydra reads it as a folder

# config group -> the config key its options fill; each option names itself there (optim/sgd.yaml: `name: sgd`)
NAMED_GROUPS = {"optim": "optim", "schedule": "schedule", "loss": "loss", "model/backbone": "model.backbone"}


def config_groups(*, _root_: DictConfig) -> str:
    """The config groups this command's config composes (its defaults list, with the command line's choices), one
    line each: `group: option, option*, ...`, the option in use starred; read from configs/<group>/*.yaml."""
    choices = _root_.hydra.runtime.choices
    lines = []
    for group in sorted(g for g in choices if g != "hydra" and not g.startswith("hydra/")):
        options = sorted(p.stem for p in (Path(CONFIGS) / group).glob("*.yaml"))
        chosen = choices[group]
        lines.append(f"{group}: " + ", ".join(f"{o}*" if o == chosen else o for o in options)
                     + ("  (none in use)" if chosen is None else ""))
    return "\n".join(lines) or "(none: every setting is a key=value of the config)"


OmegaConf.register_new_resolver("deeplab.config_groups", config_groups, replace=True)


def _override_value(value) -> str:
    """A config value as the command line writes it: null, true, [0.9,0.999], 0.0001."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, (list, tuple, ListConfig)):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    return str(value)


def check_group_choices(cfg: DictConfig, overrides: Sequence[str], choices: Mapping[str, str | None]) -> None:
    """Refuse a config group chosen on the command line that the composed config does not hold. A dataset's recipe
    (train.yaml: `recipe: ${dataset}`) cannot switch groups, as Hydra refuses `override` in a config chosen by
    interpolation, so recipe/demo.yaml merges AdamW over the chosen optimizer: `optim=sgd` would silently train with
    AdamW. The ConfigError names the recipe and the key=value overrides that give the option asked for."""
    for override in overrides:
        group, sep, option = override.partition("=")
        composed = OmegaConf.select(cfg, NAMED_GROUPS[group], default=None) if sep and group in NAMED_GROUPS else None
        if not isinstance(composed, DictConfig) or composed.get("name") == option:
            continue
        key, wanted = NAMED_GROUPS[group], OmegaConf.load(Path(CONFIGS) / group / f"{option}.yaml")
        fix = [f"{key}.{k}={_override_value(v)}" for k, v in wanted.items() if composed.get(k) != v] + \
              [f"{key}.{k}=null" for k, v in composed.items() if k not in wanted and v is not None]
        recipe = choices.get("recipe")
        source = f"the {recipe} recipe (configs/recipe/{recipe}.yaml)" if recipe else "the composed config"
        raise ConfigError(f"{override}: {source} sets {key}.name={composed.get('name')}, and a recipe chosen by the "
                          f"dataset outranks a group chosen on the command line (Hydra cannot let it switch groups); "
                          f"to train with {option}, set its keys instead: {' '.join(fix)}")
