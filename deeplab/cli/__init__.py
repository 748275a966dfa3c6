"""The commands: thin Hydra entry points over the library, the top layer of the package.

Each module here reads its config, checks the command's own settings, calls the library and prints; nothing in the
library imports from here. `train.py`, `evaluate.py` and `predict.py` at the top level and `python -m deeplab.export`,
`python -m deeplab.bench` and `python -m deeplab.data.check` run these.

`--help` prints the command's page from `configs/hydra/help/<command>.yaml` (chosen in its config's defaults list);
its list of config groups comes from `${deeplab.config_groups:}` below, not from Hydra's $APP_CONFIG_GROUPS, which
lists every group under configs/ (the training groups on predict.py's page too).
"""

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONFIGS = str(Path(__file__).resolve().parents[2] / "configs")  # absolute: Hydra reads it as a folder


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
