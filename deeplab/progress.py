"""Progress bars (tqdm, on stderr, with rate and ETA) for the long loops, behind one switch.

The switch is the environment variable DEEPLAB_PROGRESS:
  unset or `auto`   a bar only where stderr is a terminal (tqdm's disable=None): CI logs, files and pipes get none
  `1` (on, true)    always, even into a file or a pipe
  `0` (off, false)  never
A function that draws a bar takes `progress: bool | None`: True or False decides for that call, None (the default)
follows the switch. Bars never go through `logging`, so nothing of theirs reaches a log file such as train.log.
"""

import os
import warnings
from collections.abc import Iterable, Sized

from tqdm import tqdm

ENV = "DEEPLAB_PROGRESS"
ON, OFF, AUTO = ("1", "on", "true", "yes"), ("0", "off", "false", "no"), ("", "auto")
MININTERVAL = 0.5  # seconds between redraws (tests set 0 to see every tick)
# tqdm's own layout, but the rate always per second ("0.67 images/s", not "1.49s/ images" when slow)
KNOWN_TOTAL = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}{postfix}]"
UNKNOWN_TOTAL = "{desc}: {n_fmt} [{elapsed}, {rate_noinv_fmt}{postfix}]"


def progress_disable(progress: bool | None = None) -> bool | None:
    """tqdm's `disable` for a bar: False (draw), True (don't) or None (draw only on a terminal).

    `progress` True/False decides; None reads DEEPLAB_PROGRESS (an unknown value warns and counts as auto)."""
    if progress is not None:
        return not progress
    value = os.environ.get(ENV, "").strip().lower()
    if value in ON:
        return False
    if value in OFF:
        return True
    if value not in AUTO:
        warnings.warn(f"{ENV}={os.environ[ENV]!r}: not a setting; use 1 (always), 0 (never) or auto (on a terminal "
                      "only); taking auto", stacklevel=2)
    return None


def progress_bar(iterable: Iterable | None = None, *, desc: str, total: int | None = None, unit: str = " it",
                 progress: bool | None = None, leave: bool | None = None, position: int | None = None) -> tqdm:
    """A tqdm bar on stderr: `desc: 40%|####  | 12/30 [00:05<00:07, 2.40 images/s]` (rate and ETA; with no known
    total, `desc: 12 [00:05, 2.40 images/s]`).

    A bar opened while another is showing (validation inside the training bar) goes on the line below it and is
    cleared when done (tqdm's position=None, leave=None); a top-level one stays on screen. `progress` as in
    `progress_disable`."""
    if total is None and isinstance(iterable, Sized):
        total = len(iterable)
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=progress_disable(progress), leave=leave,
                position=position, mininterval=MININTERVAL, dynamic_ncols=True,
                bar_format=UNKNOWN_TOTAL if total is None else KNOWN_TOTAL)
