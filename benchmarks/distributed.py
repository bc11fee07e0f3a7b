"""Data-parallel costs: ``python -m benchmarks.distributed [--json benchmarks/results/distributed.json]``.

Starts its own MPI jobs (mpiexec beside the interpreter, else on PATH) and measures:

- allreduce of float32 buffers from our gradient size (62,006) up: scratchnet's
  ``MpiCommunicator.allreduce`` (watched against the default timeout) next to mpi4py's
  raw ``Allreduce`` on the same buffers, interleaved in one job of 2 ranks;
- training throughput (images/s, numba, float32, one thread per worker) of 1 and 2
  workers at per-worker batch 4 and 64, and the scaling efficiency, next to two
  independent single-worker processes at once (what the cores give without communication);
- a model of N = 2..64 workers: each step's compute (measured with 1 worker) plus a ring
  allreduce of the gradients, ``2(N-1) * latency + 2(N-1)/N * bytes / bandwidth``, with the
  latency and bandwidth fitted to the measured 2-rank allreduce times.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

GRADIENT_FLOATS = 62006  # the tutorial Net's parameters
SIZES = (GRADIENT_FLOATS, 1 << 18, 1 << 20, 1 << 22)
BATCHES = (4, 64)
MODEL_WORKERS = (2, 4, 8, 16, 32, 64)


def _mpiexec():
    return shutil.which("mpiexec", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))


def _job(ranks, *worker_args, copies=1):
    """Run this module's worker under mpiexec (``ranks`` 0: no launcher), ``copies`` independent jobs at once;
    return rank 0's JSON (a list of them with ``copies`` > 1)."""
    with tempfile.TemporaryDirectory() as folder:
        outs = [os.path.join(folder, f"result{copy}.json") for copy in range(copies)]
        env = {**os.environ, "NUMBA_NUM_THREADS": "1"}  # one core per worker, so workers scale over cores
        jobs = []
        for out in outs:
            command = [sys.executable, "-m", "benchmarks.distributed", "--worker", *worker_args, "--out", out]
            jobs.append(subprocess.Popen([_mpiexec(), "-n", str(ranks), *command] if ranks else command, env=env))
        if any(job.wait() for job in jobs):
            raise SystemExit(f"a benchmark job failed: {worker_args}")
        results = []
        for out in outs:
            with open(out) as file:
                results.append(json.load(file))
        return results[0] if copies == 1 else results


# ---- workers (run under mpiexec) -------------------------------------------------------------------


def _allreduce_worker(comm, repeats):
    from mpi4py import MPI

    results = []
    for size in SIZES:
        buffer = np.ones(size, dtype=np.float32)
        count = max(20, int(repeats * GRADIENT_FLOATS / size))
        times = {"scratchnet": [], "mpi4py": []}
        for _ in range(7):  # alternate the two, so drifting load hits both alike
            for name in times:
                comm.barrier()
                started = time.perf_counter()
                for _ in range(count):
                    if name == "scratchnet":
                        comm.allreduce(buffer, "sum")
                    else:
                        comm.comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
                times[name].append((time.perf_counter() - started) / count)
        best = {name: float(np.median(values)) for name, values in times.items()}
        results.append({"floats": size, "bytes": size * 4, "scratchnet_s": best["scratchnet"],
                        "mpi4py_s": best["mpi4py"], "ratio": best["scratchnet"] / best["mpi4py"],
                        "scratchnet_GBps": size * 4 / best["scratchnet"] / 1e9})
    return results


def _throughput_worker(comm, batch, steps):
    from scratchnet import distributed, nn
    from scratchnet.models import Net
    from scratchnet.optim import SGD
    from scratchnet.step import compile_step

    rng = np.random.default_rng(comm.rank)
    images = rng.uniform(-1, 1, (batch, 3, 32, 32)).astype(np.float32)
    labels = rng.integers(0, 10, batch)
    net = Net(seed=0).to("numba")
    criterion = nn.CrossEntropyLoss().to("numba")
    optimizer = distributed.DataParallelOptimizer(SGD(net.parameters(), lr=0.001, momentum=0.9), comm)
    step = compile_step(net, criterion, optimizer, batch, capture=False)  # as fit's
    for _ in range(10):  # compile and warm up
        step(images, labels)
    comm.barrier()
    optimizer.allreduce_s = 0.0
    started = time.perf_counter()
    for _ in range(steps):
        step(images, labels)
    elapsed = time.perf_counter() - started
    slowest = max(comm.allgather_json(elapsed))
    return {"workers": comm.size, "batch_per_worker": batch, "steps": steps, "step_s": slowest / steps,
            "allreduce_s_per_step": optimizer.allreduce_s / steps,
            "images_per_s": comm.size * batch * steps / slowest}


def _worker(args):
    from scratchnet import distributed

    comm = distributed.init("numba")
    if args.worker[0] == "allreduce":
        result = _allreduce_worker(comm, int(args.worker[1]))
    else:
        result = _throughput_worker(comm, int(args.worker[1]), int(args.worker[2]))
    if comm.rank == 0:
        with open(args.out, "w") as file:
            json.dump(result, file)


# ---- the driver ------------------------------------------------------------------------------------


def fit_latency_bandwidth(allreduce):
    """Least-squares ``time = 2 latency + bytes / bandwidth`` over the measured 2-rank allreduces.

    Weighted by relative error, so the small buffers (which fix the latency) count as much as the large.
    """
    sizes = np.array([row["bytes"] for row in allreduce], dtype=np.float64)
    times = np.array([row["scratchnet_s"] for row in allreduce])
    slope, intercept = np.polyfit(sizes, times, 1, w=1 / times)
    # For 2 ranks a ring allreduce is 2 latencies and 2*(1/2) = 1 buffer over the link.
    return max(intercept / 2, 0.0), 1.0 / slope


def scaling_model(throughput, latency, bandwidth):
    rows = []
    gradient_bytes = GRADIENT_FLOATS * 4
    for row in throughput:
        if row["workers"] != 1:
            continue
        compute = row["step_s"]
        for workers in MODEL_WORKERS:
            ring = 2 * (workers - 1) * latency + 2 * (workers - 1) / workers * gradient_bytes / bandwidth
            rows.append({"workers": workers, "batch_per_worker": row["batch_per_worker"], "compute_s": compute,
                         "ring_allreduce_s": ring, "efficiency": compute / (compute + ring),
                         "images_per_s": workers * row["batch_per_worker"] / (compute + ring)})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.distributed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="FILE", help="write the results here")
    parser.add_argument("--repeats", type=int, default=2000, help="allreduces per timing at the gradient size")
    parser.add_argument("--steps", type=int, default=200, help="timed training steps per throughput run")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args)
    if _mpiexec() is None:
        parser.exit(1, f"{parser.prog}: error: mpiexec not found: pip install mpi4py mpich\n")

    allreduce = _job(2, "allreduce", str(args.repeats))
    for row in allreduce:
        print(f"allreduce {row['floats']:>9,} floats: scratchnet {row['scratchnet_s'] * 1e6:8.1f} us, "
              f"mpi4py {row['mpi4py_s'] * 1e6:8.1f} us ({row['ratio']:.2f}x), {row['scratchnet_GBps']:.2f} GB/s")
    throughput = []
    for batch in BATCHES:
        steps = max(20, args.steps * 4 // batch)
        single = _job(0, "throughput", str(batch), str(steps))
        double = _job(2, "throughput", str(batch), str(steps))
        # What this machine gives two processes that never communicate: the ceiling for 2 workers.
        ceiling = sum(run["images_per_s"] for run in _job(0, "throughput", str(batch), str(steps), copies=2))
        double["scaling_efficiency"] = double["images_per_s"] / (2 * single["images_per_s"])
        double["two_independent_processes_images_per_s"] = ceiling
        double["fraction_of_two_independent_processes"] = double["images_per_s"] / ceiling
        throughput += [single, double]
        print(f"batch {batch:>2} per worker: 1 worker {single['images_per_s']:8.0f} images/s, 2 workers "
              f"{double['images_per_s']:8.0f} images/s, scaling efficiency {double['scaling_efficiency']:.2f} "
              f"(2 independent processes: {ceiling:.0f} images/s)")
    latency, bandwidth = fit_latency_bandwidth(allreduce)
    model = scaling_model(throughput, latency, bandwidth)
    print(f"fitted link: latency {latency * 1e6:.1f} us, bandwidth {bandwidth / 1e9:.2f} GB/s")
    for row in model:
        print(f"model: {row['workers']:>2} workers x batch {row['batch_per_worker']:>2}: "
              f"efficiency {row['efficiency']:.2f}, {row['images_per_s']:9.0f} images/s")
    if args.json:
        from scratchnet.files import write_json
        from scratchnet.report import machine

        write_json(args.json, {"allreduce": allreduce, "throughput": throughput,
                               "link": {"latency_s": latency, "bandwidth_Bps": bandwidth}, "model": model,
                               "machine": machine(), "note": "shared machine, indicative"})


if __name__ == "__main__":
    sys.exit(main())
