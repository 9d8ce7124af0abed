"""The first run a newcomer makes: `python3 launch.py` (the default digits DDPM config) from the
command to the final sample grid, timed phase by phase from its progress output.

    python benchmarks/first_run.py [--workdir DIR] [--cold] [-- extra launch.py arguments]

Runs the launcher in a subprocess in a fresh work directory (`--cold`: with an empty XLA
compilation cache, as on a fresh clone) and prints one table: wall seconds to the first
training line, to the end of training, to the grid (`samples/step_<N>.png`), and the CPU
seconds (user + sys) the run used, which a busy machine inflates less than wall time. No
PyTorch row: there is no equivalent first run to compare with.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(workdir: str, cold: bool, extra: list[str]) -> dict:
    env = dict(os.environ)
    if cold:
        env["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="xla_cold_")
    command = [sys.executable, os.path.join(ROOT, "launch.py"), f"--workdir={workdir}", *extra]
    if cold:
        command.append(f"--config.compilation_cache_dir={env['JAX_COMPILATION_CACHE_DIR']}")
    marks, start = {}, time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        now = time.perf_counter() - start
        sys.stdout.write(line)
        if line.startswith("train ") and "first training line" not in marks:
            marks["first training line"] = now
        if line.startswith("sample:"):
            marks["end of training"] = now
    if proc.wait() != 0:
        raise SystemExit(f"launch.py exited with {proc.returncode}")
    marks["grid written"] = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    marks["CPU seconds (user+sys)"] = (after.ru_utime - before.ru_utime
                                       + after.ru_stime - before.ru_stime)
    return marks


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="")
    parser.add_argument("--cold", action="store_true")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    workdir = args.workdir or tempfile.mkdtemp(prefix="first_run_")
    marks = run(workdir, args.cold, extra)
    print(f"\nfirst run: python3 launch.py --workdir={workdir} {' '.join(extra)}".rstrip())
    print(f"{'phase':<28}{'seconds':>10}")
    for name, seconds in marks.items():
        print(f"{name:<28}{seconds:>10.1f}")


if __name__ == "__main__":
    main()
