"""Test set-up, before JAX is imported: one CPU device, and a persistent compilation cache so
identical programs (each test builds its own) compile once. Subprocesses started by tests inherit
both through the environment.

Tests marked `@pytest.mark.devices(n)` (sharding, data parallelism) need n fake CPU devices: the
first of them in each module runs all of that module's marked tests, selected by node id, in one
child pytest on n devices, and each marked test reports the child's outcome. Every other test runs
on one device, where tiny programs compile and run several times faster than split eight ways.
A pre-set XLA_FLAGS that already fixes the device count is refused rather than silently kept.

The README's default suite (`-m "not slow"`, spread over the cores by pytest-xdist, one worker
per test file) is hundreds of tiny programs whose cold compilation dominates its time: it
compiles them with `--xla_backend_optimization_level=0` (eight test files, cold: 212 s -> 154 s
on 2 cores; every test passes at either level). The slow suite, which executes longer than it
compiles (a training test: 27 s -> 35 s at level 0), keeps XLA's default optimisation."""
import json
import os
import subprocess
import sys
import tempfile

import pytest

_DEVICE_FLAG = "--xla_force_host_platform_device_count"
_CHILD_REPORT = "DIFFUSION_JAX_TEST_CHILD_REPORT"  # set in a child: where it writes its outcomes
_OWN_FLAGS = "DIFFUSION_JAX_TEST_XLA_FLAGS"  # the XLA_FLAGS set here (pytest-xdist workers inherit)


def _set_device_count():
    flags = os.environ.get("XLA_FLAGS", "")
    if _CHILD_REPORT in os.environ or flags == os.environ.get(_OWN_FLAGS):
        return  # the parent chose this child's device count, or this process's parent did
    if _DEVICE_FLAG in flags:
        raise pytest.UsageError(
            f"XLA_FLAGS={flags!r} sets the device count; the suite chooses it per test "
            "(@pytest.mark.devices); unset XLA_FLAGS or drop that flag")
    os.environ["XLA_FLAGS"] = os.environ[_OWN_FLAGS] = f"{flags} {_DEVICE_FLAG}=1".strip()


_set_device_count()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "diffusion_jax_test_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

_FAST_SUITE_FLAG = "--xla_backend_optimization_level=0"


def pytest_configure(config):
    """The default suite's cheaper compilation (before any test module starts JAX's backend);
    xdist workers and device children inherit it through the environment."""
    flags = os.environ.get("XLA_FLAGS", "")
    if (config.option.markexpr == "not slow" and _FAST_SUITE_FLAG not in flags
            and _CHILD_REPORT not in os.environ):
        os.environ["XLA_FLAGS"] = os.environ[_OWN_FLAGS] = f"{flags} {_FAST_SUITE_FLAG}"


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_child_outcomes = {}  # node id -> (passed, skipped, text) from the child runs of the parent


def _devices(item):
    marker = item.get_closest_marker("devices")
    return None if marker is None else int(marker.args[0])


def _run_child(items, devices):
    """The given items in one pytest process on `devices` fake CPU devices; their outcomes."""
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "outcomes.json")
        env = dict(os.environ, **{_CHILD_REPORT: report})
        env["XLA_FLAGS"] = " ".join(
            [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(_DEVICE_FLAG)]
            + [f"{_DEVICE_FLAG}={devices}"])
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
             *[item.nodeid for item in items]],
            cwd=_ROOT, env=env, capture_output=True, text=True)
        outcomes = {}
        if os.path.exists(report):
            with open(report) as f:
                outcomes = {k: tuple(v) for k, v in json.load(f).items()}
    for item in items:
        outcomes.setdefault(item.nodeid, (False, False, "no outcome from the child pytest:\n"
                                          + proc.stdout[-4000:] + proc.stderr[-4000:]))
    return outcomes


def pytest_collection_modifyitems(session, config, items):
    """Modules with device-marked tests (each starts a child pytest) first, then the others by
    their number of tests, most first (ties and the tests within a module in collection order):
    pytest-xdist hands out whole files in this order, so long files do not start last and leave
    the other workers idle at the end."""
    children = {i.module.__name__ for i in items if _devices(i) is not None}
    counts = {}
    for i in items:
        counts[i.module.__name__] = counts.get(i.module.__name__, 0) + 1
    items.sort(key=lambda i: (i.module.__name__ not in children, -counts[i.module.__name__]))


def pytest_runtest_setup(item):
    devices = _devices(item)
    if devices is None or _CHILD_REPORT in os.environ:
        return
    if item.nodeid not in _child_outcomes:
        group = [i for i in item.session.items
                 if i.module is item.module and _devices(i) == devices]
        _child_outcomes.update(_run_child(group, devices))
    _, skipped, text = _child_outcomes[item.nodeid]
    if skipped:
        pytest.skip(text)


def pytest_pyfunc_call(pyfuncitem):
    """A marked test's body ran in the child: report its outcome instead of running it here."""
    devices = _devices(pyfuncitem)
    if devices is None or _CHILD_REPORT in os.environ:
        return None
    passed, _, text = _child_outcomes[pyfuncitem.nodeid]
    if not passed:
        pytest.fail(f"on {devices} devices (child pytest):\n{text}", pytrace=False)
    return True


def pytest_runtest_logreport(report):
    """In a child: record each test's outcome for the parent."""
    path = os.environ.get(_CHILD_REPORT)
    if path is None:
        return
    outcomes = {}
    if os.path.exists(path):
        with open(path) as f:
            outcomes = json.load(f)
    passed, skipped, text = outcomes.get(report.nodeid, (True, False, ""))
    if report.skipped:
        skipped, text = True, str(report.longrepr[-1] if isinstance(report.longrepr, tuple)
                                  else report.longrepr)
    elif report.failed:
        passed, text = False, f"{report.when}: {report.longreprtext}"
    outcomes[report.nodeid] = (passed, skipped, text)
    with open(path, "w") as f:
        json.dump(outcomes, f)
