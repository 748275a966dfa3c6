"""The commands: thin Hydra entry points over the library, the top layer of the package.

Each module here reads its config, checks the command's own settings, calls the library and prints; nothing in the
library imports from here. `train.py`, `evaluate.py` and `predict.py` at the top level and `python -m deeplab.export`,
`python -m deeplab.bench` and `python -m deeplab.data.check` run these.
"""

from pathlib import Path

CONFIGS = str(Path(__file__).resolve().parents[2] / "configs")  # absolute: Hydra reads it as a folder
