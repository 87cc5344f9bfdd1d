"""benchmarks/bench_training.py: the peak it divides by, and that it runs (the figures live in RESULTS.md)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_training  # noqa: E402

ZEN4 = {
    "Vendor ID": "AuthenticAMD",
    "CPU family": "25",
    "Core(s) per socket": "2",
    "Socket(s)": "1",
    "CPU max MHz": "2600.0",
    "Flags": "fma avx2 avx512f avx512_bf16",
}
ICELAKE = {
    "Vendor ID": "GenuineIntel",
    "CPU family": "6",
    "Core(s) per socket": "8",
    "Socket(s)": "2",
    "CPU max MHz": "3000.0",
    "Flags": "fma avx2 avx512f",
}


@pytest.mark.parametrize(
    "info, precision, threads, gflops",
    [
        (ZEN4, "fp32", 2, 2 * 2.6 * 32),  # Zen 4: 512-bit instructions on two 256-bit FMA pipes
        (ZEN4, "bf16", 2, 2 * 2.6 * 64),  # AVX512_BF16 pairs double it
        (ZEN4, "fp32", 8, 2 * 2.6 * 32),  # never more cores than the machine has
        (ICELAKE, "fp32", 4, 4 * 3.0 * 64),  # two 512-bit FMA pipes
        (ICELAKE, "bf16", 4, 4 * 3.0 * 64),  # no bf16 instructions: the fp32 rate
        ({**ICELAKE, "Flags": "fma avx2 avx512f amx_bf16"}, "bf16", 1, 3.0 * 1024),
    ],
)
def test_cpu_peak_estimate_from_lscpu(monkeypatch, info, precision, threads, gflops):
    monkeypatch.setattr(bench_training, "lscpu", lambda: info)
    flops, how = bench_training.cpu_peak(precision, threads)
    assert flops == pytest.approx(gflops * 1e9)
    assert precision in how and "GHz" in how


def test_benchmark_runs_and_prints_its_table(capsys):
    assert (
        bench_training.main(
            [
                "--device",
                "cpu",
                "--networks",
                "nns",
                "--small-batch",
                "8",
                "--steps",
                "1",
                "--warmup",
                "1",
                "--seconds",
                "0",
                "--no-end-to-end",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("machine: ") and "peak fp32" in out and "peak bf16" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("nns ")]
    assert [(r[3], r[5]) for r in rows] == [("fp32", "model"), ("bf16", "model")]
    assert all(float(r[7]) > 0 for r in rows)  # img/s
