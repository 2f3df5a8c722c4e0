"""The figures behind the noise guard's thresholds (``bench/measure/noise.py``).

    python tests/benchmarks/noise_thresholds.py results/default results/hardware ... [--probe-seconds 3]

1. For every ok cell in the stores: batch-time dispersion (MAD / median), the ratio of the sampler's median batch time
   to NFE × the denoiser-alone median, and (where recorded) other processes' CPU during the timed loop. Run on stores
   measured alone, these give the spread of a quiet measurement; the thresholds sit above it.
2. A probe, measured in this run: a fixed matmul loop timed quiet, then beside one busy process per visible core,
   with the CPU monitor's reading of both. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time

import torch

from bench import store
from bench.measure import noise


def store_figures(paths: list[str]) -> None:
    for path in paths:
        df = store.load(path)
        ok = df[df["status"] == "ok"]
        disp, ratios, others = [], [], []
        for _, r in ok.iterrows():
            raw = r["raw"]
            disp.append(noise.dispersion(raw["latency_batch_s"]))
            den = raw["denoiser_call_s"]
            calls = r["nfe_by_network"]
            if all(k in den for k in calls):
                expected = sum(n * statistics.median(den[k]) for k, n in calls.items())
                ratios.append(statistics.median(raw["latency_batch_s"]) / expected)
            if "others_cpu_cores" in r and r["others_cpu_cores"] == r["others_cpu_cores"]:
                others.append(r["others_cpu_cores"])
        line = (f"{path}: {len(ok)} cells; dispersion max {max(disp):.3f} (median {statistics.median(disp):.3f}); "
                f"sampler/denoiser ratio {min(ratios):.2f}–{max(ratios):.2f}")
        if others:
            line += f"; others' CPU {min(others):.3f}–{max(others):.3f} cores (median {statistics.median(others):.3f})"
        suspect = ok["latency_suspect"].notna().sum() if "latency_suspect" in ok else 0
        print(line + f"; flagged {suspect}")


def _spin(stop_at: float) -> None:
    while time.time() < stop_at:
        pass


def probe(seconds: float) -> None:
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    a = torch.randn(512, 512)

    def loop() -> tuple[float, dict]:
        with noise.CpuMonitor() as load:
            times = []
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                start = time.perf_counter()
                for _ in range(20):
                    a @ a
                times.append(time.perf_counter() - start)
        return statistics.median(times), {**load.result(), "dispersion": noise.dispersion(times)}

    quiet_t, quiet = loop()
    stop_at = time.time() + seconds + 1
    procs = [multiprocessing.Process(target=_spin, args=(stop_at,), daemon=True)
             for _ in os.sched_getaffinity(0)]
    for p in procs:
        p.start()
    time.sleep(0.3)
    busy_t, busy = loop()
    for p in procs:
        p.join()
    for name, t, load in (("quiet", quiet_t, quiet), ("beside busy processes", busy_t, busy)):
        print(f"probe {name}: {t * 1e3:.1f} ms per 20 matmuls; others' CPU {load['others_cpu_cores']:.3f} cores, "
              f"own {load['own_cpu_cores']:.2f}, steal {load['steal_fraction']:.3f}, dispersion "
              f"{load['dispersion']:.3f}")
    print(f"contention slows the loop {busy_t / quiet_t:.2f}×")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stores", nargs="*")
    parser.add_argument("--probe-seconds", type=float, default=3.0)
    args = parser.parse_args()
    store_figures(args.stores)
    if args.probe_seconds > 0:
        probe(args.probe_seconds)


if __name__ == "__main__":
    main()
