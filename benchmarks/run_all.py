"""Run every benchmark with small default sizes and print their tables, each with its ratio to a peer.

Each benchmark is a separate script (run on its own for bigger sizes); this runs them one after
another in subprocesses with the same Python, collects their printed tables and says how long each
took. The defaults keep the whole run under ~10 minutes on a 2-core CPU; ``--scale`` multiplies
the sizes, ``--only`` picks benchmarks. The CPU may be shared: figures are indicative, ratios (peer
measured in the same run) are the result.

    .venv/bin/python benchmarks/run_all.py                  # all, small
    .venv/bin/python benchmarks/run_all.py --only embedding,int8 --scale 4
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def plan(scale: float, threads: int) -> dict[str, list[str]]:
    """Benchmark name -> script and arguments, sized by ``scale`` (1 = the quick defaults)."""
    n = lambda base: str(max(1, int(base * scale)))  # noqa: E731
    return {
        "embedding": ["bench_embedding.py", "--seconds", str(2 * scale), "--threads", str(threads)],
        "int8": ["bench_int8.py", "--pairs-per-fold", n(20)],
        "mining": ["bench_mining.py", "--repeats", n(3), "--threads", str(threads)],
        "gallery": ["bench_gallery.py", "--n", n(50_000), "--queries", n(200), "--threads", str(threads)],
        "detectors": ["bench_detectors.py", "--limit", n(100), "--threads", str(threads)],
        "end_to_end": ["bench_end_to_end.py", "--limit", n(64), "--threads", str(threads)],
        "serve": ["bench_serve.py", "--requests", n(100)],
        "training": ["bench_training.py", "--seconds", str(3 * scale), "--threads", str(threads)],
    }


def main(argv=None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every benchmark's size (default 1)")
    ap.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="CPU threads (default: physical cores)"
    )
    ap.add_argument(
        "--only",
        default="",
        help="comma-separated subset of: embedding,int8,mining,gallery,detectors,end_to_end,serve,training",
    )
    ap.add_argument("--list", action="store_true", help="print the commands without running them")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(HERE))
    from bench_embedding import machine_line

    print(machine_line(args.threads))
    jobs = plan(args.scale, args.threads)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()] or list(jobs)
    unknown = sorted(set(chosen) - set(jobs))
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(jobs)}", file=sys.stderr)
        return 2
    failed = []
    for name in chosen:
        script, *rest = jobs[name]
        command = [sys.executable, str(HERE / script), *rest]
        shown = " ".join([".venv/bin/python", f"benchmarks/{script}", *rest])
        print(f"\n=== {name}: {shown}")
        if args.list:
            continue
        if not (HERE / script).is_file():
            print("(script not present)")
            continue
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        print(done.stdout.rstrip())
        if done.returncode != 0:
            failed.append(name)
            print(
                f"FAILED (exit {done.returncode}): "
                f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}"
            )
        print(f"--- {name} took {time.perf_counter() - start:.0f} s")
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
