"""The one timing loop the benchmark and precision=auto's measurement share."""

import time
from collections.abc import Callable


def interleaved(contenders: dict[str, Callable[[], object]], *, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each contender, alternating the order every round so drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            start = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - start)
    return times
