"""Smoke tests of the benchmark scripts: they run on CPU with tiny networks and print their
table. No timing is asserted (the numbers of a CPU smoke run mean nothing)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(name, *args):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", name), *args],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def table_rows(stdout):
    return [line for line in stdout.splitlines() if line.startswith("| ") and "---" not in line]


@pytest.mark.slow
def test_train_throughput_smoke():
    stdout = run_script("train_throughput.py", "--tiny", "--networks", "ddpm", "--dtypes",
                        "float32", "--batch", "2", "--steps", "1", "--image_size", "8",
                        "--matmul", "64", "--steps_per_call", "1,2")
    header, *rows = table_rows(stdout)
    assert "train images/s" in header and "MFU" in header and "compile s" in header
    assert [r.split(" | ")[3] for r in rows] == ["diffusion_jax float32",
                                                 "diffusion_jax float32 2 steps/call"]
    assert all(r.startswith("| ddpm |") for r in rows)


@pytest.mark.slow
def test_train_throughput_times_the_sit_backbone_on_latents():
    """The sit_xl2 row (tiny: two DiT blocks) trains on 4-channel latents through the flow
    method; without --dit_repo no PyTorch row is printed and the ratio is n/a."""
    stdout = run_script("train_throughput.py", "--tiny", "--networks", "sit_xl2", "--dtypes",
                        "bfloat16", "--batch", "2", "--steps", "1", "--image_size", "8",
                        "--matmul", "64")
    header, *rows = table_rows(stdout)
    assert "vs PyTorch compiled bf16" in header
    (row,) = rows
    cells = row.strip("| ").split(" | ")
    assert cells[0] == "sit_xl2" and cells[3] == "diffusion_jax bfloat16" and cells[-1] == "n/a"
    assert int(cells[1].replace(",", "")) > 0 and float(cells[4].replace(",", "")) > 0


@pytest.mark.slow
def test_sampler_throughput_smoke():
    stdout = run_script("sampler_throughput.py", "--tiny", "--batch", "2", "--image_size", "8",
                        "--samplers", "ddim", "--steps_scale", "0.01", "--repeats", "1")
    header, *rows = table_rows(stdout)
    assert "ours images/s" in header and "ours / diffusers" in header
    assert [r.split(" | ")[0] for r in rows] == ["| eval", "| ddim 2 steps"]


@pytest.mark.slow
def test_train_breakdown_smoke(tmp_path):
    stdout = run_script("train_breakdown.py", "--tiny", "--networks", "ddpm", "--dtypes",
                        "float32", "--batch", "8", "--steps", "2", "--image_size", "8",
                        "--trace_dir", str(tmp_path))
    header, *rows = table_rows(stdout)
    assert "ms per step" in header and "share of full step" in header and "GFLOP" in header
    cells = [row.strip("| ").split(" | ") for row in rows]
    assert [c[2] for c in cells] == [
        "forward", "forward+backward", "optimizer+EMA", "full step",
        "full step, model.attn_resolutions=()", "full step, model.dropout=0",
        "input: BatchLoader digits 8x8x1", "input: host->device 8x8x3"]
    assert all(c[:2] == ["ddpm", "float32"] for c in cells)
    for c in cells:
        assert float(c[3]) > 0 and float(c[4].rstrip("%")) > 0 and float(c[5].replace(",", "")) > 0
    gflop = {c[2]: float(c[6]) for c in cells[:6]}
    assert gflop["forward+backward"] > 2 * gflop["forward"] > 0 and gflop["optimizer+EMA"] == 0
    assert all(c[7].endswith(("(keeps up)", "(too slow)")) for c in cells[6:])
    assert list(tmp_path.glob("ddpm_float32/plugins/profile/*/perfetto_trace.json.gz"))


def test_unknown_network_is_refused():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "train_throughput.py"),
                          "--networks", "resnet"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0 and "valid: ddpm, score_sde_ddpmpp, edm_ddpmpp" in out.stderr
