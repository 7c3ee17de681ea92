"""Random-walk time and peak memory, sparse (ours) vs dense (the official PSA/IRN algorithm).

    python benchmarks/bench_random_walk.py                       # grids 32², 64², 96², 128²; dense up to 64²
    python benchmarks/bench_random_walk.py --dense-max-nodes 9216 --out runs/bench_random_walk.json

For every grid size (h = w) and method, a fresh Python subprocess

1. draws random affinity features (D = 16 channels, seeded) and computes the (K, h, w) affinities of
   radius ``--radius`` (not timed: that is AffinityNet's job) and a random 21-channel score map;
2. builds ``T = D⁻¹ W^β`` (β = 8) and applies it ``t = 256`` times — sparse: CSR, ``T`` applied t
   times (:func:`wsss_core.affinity.random_walk`, ``method="sparse"``); dense: the N × N matrix
   squared log₂ t = 8 times (``method="dense"``), as PSA's ``infer_aff.py`` does;
3. reports the wall time of building ``T`` and of the walk, and the **peak resident memory above the
   process's resident memory just before building T** — measured by resetting the kernel's
   high-water mark (``/proc/self/clear_refs`` ← 5) and reading ``VmHWM`` afterwards (Linux), or with
   ``resource.getrusage`` deltas elsewhere (a lower bound). ``--threads`` sets torch's threads
   (default: torch's own choice).

The dense walk costs O(N³) per squaring: it is skipped above ``--dense-max-nodes`` (default 4 096 =
64², ≈ 30 s on a laptop CPU; 96² takes ~10× that) and the JSON gives its memory (3 N × N float32
matrices: W^β, T and T²) and a time extrapolated by N³ from the largest measured grid, marked
``"estimated": true``. On small grids the two results are compared (max |difference|).

Prints one JSON document; ``--out`` also writes it to a file.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_kib() -> tuple[int, int, str]:
    """(current RSS, high-water mark) in KiB and how they were read."""
    try:
        text = Path("/proc/self/status").read_text()
        vals = {ln.split(":")[0]: int(ln.split()[1]) for ln in text.splitlines() if ln.startswith(("VmRSS", "VmHWM"))}
        return vals["VmRSS"], vals["VmHWM"], "proc"
    except Exception:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = peak // 1024 if sys.platform == "darwin" else peak
        return peak, peak, "rusage"


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except Exception:
        return False


def child(args) -> dict:
    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from wsss_core import affinity as A

    # warm-up on a tiny grid: imports (scipy.sparse), first-call allocations
    wa = A.local_affinities(torch.rand(4, 8, 8), args.radius)
    A.propagate(A.transition_matrix(wa, args.radius, args.beta, kind=args.method), torch.rand(2, 8, 8), 2)
    g = torch.Generator().manual_seed(args.seed)
    n = args.grid
    feats = torch.randn(16, n, n, generator=g)
    aff = A.local_affinities(feats, args.radius)
    x = torch.rand(args.channels, n, n, generator=g)
    del feats
    rss0, _, how = _rss_kib()
    reset = _reset_peak()
    t0 = time.perf_counter()
    T = A.transition_matrix(aff, args.radius, args.beta, kind=args.method)
    t1 = time.perf_counter()
    out = A.propagate(T, x, args.t)
    t2 = time.perf_counter()
    rss1, hwm, _ = _rss_kib()
    peak = (hwm if reset else max(hwm, rss1)) - rss0
    res = {"grid": n, "nodes": n * n, "method": args.method, "build_s": t1 - t0, "walk_s": t2 - t1,
           "total_s": t2 - t0, "peak_mib": max(peak, 0) / 1024.0,
           "memory_measure": "VmHWM reset via /proc/self/clear_refs" if reset else f"{how} delta (lower bound)",
           "matrix_mib": (A.dense_matrix_bytes(n * n) if args.method == "dense"
                          else A.sparse_matrix_bytes((n, n), args.radius)) / 2 ** 20,
           "checksum": float(out.double().sum())}
    if args.save:
        np.save(args.save, out.numpy())
    return res


def run_one(grid: int, method: str, a, save: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", "--grid", str(grid), "--method", method, "--radius", str(a.radius),
           "--t", str(a.t), "--beta", str(a.beta), "--channels", str(a.channels), "--seed", str(a.seed),
           "--threads", str(a.threads or 0)]
    if save:
        cmd += ["--save", save]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        return {"grid": grid, "nodes": grid * grid, "method": method, "error": p.stderr.strip()[-2000:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grids", type=int, nargs="+", default=[32, 64, 96, 128])
    ap.add_argument("--radius", type=int, default=5)
    ap.add_argument("--t", type=int, default=256)
    ap.add_argument("--beta", type=float, default=8.0)
    ap.add_argument("--channels", type=int, default=21)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--dense-max-nodes", type=int, default=4096)
    ap.add_argument("--compare-max-nodes", type=int, default=4096, help="compare sparse and dense outputs up to here")
    ap.add_argument("--out", type=str, default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--grid", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--method", type=str, help=argparse.SUPPRESS)
    ap.add_argument("--save", type=str, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a)))
        return {}

    import tempfile

    import numpy as np
    import torch

    results, agreement = [], {}
    load0 = os.getloadavg() if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory() as tmp:
        for n in a.grids:
            N = n * n
            compare = N <= min(a.compare_max_nodes, a.dense_max_nodes)
            rs = run_one(n, "sparse", a, save=f"{tmp}/s{n}.npy" if compare else None)
            results.append(rs)
            if N <= a.dense_max_nodes:
                rd = run_one(n, "dense", a, save=f"{tmp}/d{n}.npy" if compare else None)
                results.append(rd)
                if compare and "error" not in rs and "error" not in rd:
                    agreement[str(n)] = float(np.abs(np.load(f"{tmp}/s{n}.npy") - np.load(f"{tmp}/d{n}.npy")).max())
    dense_done = [r for r in results if r["method"] == "dense" and "error" not in r]
    ref = max(dense_done, key=lambda r: r["nodes"]) if dense_done else None
    for n in a.grids:
        N = n * n
        if N > a.dense_max_nodes:
            est = {"grid": n, "nodes": N, "method": "dense", "skipped": f"N = {N} > --dense-max-nodes {a.dense_max_nodes}",
                   "matrix_mib": N * N * 4 / 2 ** 20, "peak_mib_estimate": 3 * N * N * 4 / 2 ** 20}
            if ref is not None:
                est["total_s_estimate"] = ref["total_s"] * (N / ref["nodes"]) ** 3
                est["estimated"] = True
            results.append(est)
    speedup = {}
    for n in a.grids:
        s = next((r for r in results if r["grid"] == n and r["method"] == "sparse" and "total_s" in r), None)
        d = next((r for r in results if r["grid"] == n and r["method"] == "dense" and "total_s" in r), None)
        if s and d:
            speedup[str(n)] = {"dense_over_sparse_time": d["total_s"] / s["total_s"],
                               "dense_over_sparse_peak_memory": d["peak_mib"] / max(s["peak_mib"], 1e-3)}
    report = {
        "benchmark": "random walk, sparse vs dense",
        "settings": {"radius": a.radius, "t": a.t, "beta": a.beta, "channels": a.channels, "affinity_channels": 16,
                     "threads": a.threads or torch.get_num_threads(), "dense_max_nodes": a.dense_max_nodes},
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "loadavg_start": load0, "loadavg_end": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "results": results,
        "max_abs_diff_sparse_vs_dense": agreement,
        "speedup": speedup,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
