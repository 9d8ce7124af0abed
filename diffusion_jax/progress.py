"""What a person sees during a long phase (training, sampling, evaluation): on a terminal a tqdm
bar with the rate and the time left; elsewhere (a log file, a cluster job) one line per
reported update, so logs stay readable. Process 0 alone shows it."""
from __future__ import annotations

import sys
import time

from tqdm import tqdm


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Progress of `total` units of `desc` from `initial` (a resumed run starts part-way)."""

    def __init__(self, total: int, desc: str, unit: str = "step", enabled: bool = True,
                 initial: int = 0):
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.tty = sys.stderr.isatty()
        self.done = self.initial = initial
        self.start = time.perf_counter()
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr,
                        dynamic_ncols=True, disable=not (enabled and self.tty))

    def note(self, text: str) -> None:
        """A one-off message (e.g. that the first call is compiling)."""
        if self.enabled:
            (self.bar.write if self.tty else print)(f"{self.desc}: {text}", file=sys.stderr,
                                                     flush=True)

    def update(self, n: int = 1, line: bool = False, **info) -> None:
        """`n` more units done; `info` (e.g. loss) is shown beside the bar, and written as a line
        when not on a terminal and `line` is set."""
        self.done += n
        if not self.enabled:
            return
        if self.tty:
            if info:
                self.bar.set_postfix({k: f"{v:.4g}" if isinstance(v, float) else v
                                      for k, v in info.items()}, refresh=False)
            self.bar.update(n)
        elif line:
            elapsed = time.perf_counter() - self.start
            rate = (self.done - self.initial) / max(elapsed, 1e-9)
            left = (self.total - self.done) / rate if rate > 0 else 0.0
            extra = "".join(f" {k} {v:.4g}" if isinstance(v, float) else f" {k} {v}"
                            for k, v in info.items())
            print(f"{self.desc} {self.done}/{self.total}{extra} {rate:.3g} {self.unit}/s, "
                  f"{_duration(left)} left", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()
