"""The cupy backend's capture hook: a run of kernel launches recorded once as a CUDA graph, replayed by one launch.

At the tutorial's batch of 4 the GPU runs each of a step's ~40 kernels faster than
Python and CuPy can launch the next, so an eager step costs its host-side overhead
(about 1.7 ms on an H200), not its arithmetic. ``scratchnet.step.CapturedStep`` records
one step through ``capture`` and then runs each later step as a single graph launch.

What the recording relies on here:

* Private memory. Every array allocated during capture comes from a ``MemoryPool`` owned
  by the ``Graph`` and used for nothing else, so the addresses baked into the graph are
  never handed to other arrays (PyTorch's graphs keep a private pool for the same
  reason). The capture runs in CuPy's default relaxed mode, in which that pool may still
  call cudaMalloc; on one stream the graph is a chain, so memory freed and reused within
  the capture is ordered as it was when captured.
* Our own kernels. CuPy refuses cuBLAS calls during capture (before issuing them), so
  only steps whose dense products and convolutions are small enough for the backend's
  direct kernels (the tutorial's batch 4, for one) are captured.
"""

from scratchnet.backends.cupy.device import cp as cupy


class Graph:
    """A recorded graph, and the memory pool its arrays live in and the stream it was recorded on, kept as
    long as the graph is."""

    def __init__(self, graph, pool, stream):
        self._graph, self._pool, self._stream = graph, pool, stream

    def replay(self):
        """Launch the graph on the current stream: ordered after the work queued before it."""
        self._graph.launch()


def capture(run):
    """(``Graph``, ``run()``'s result) of ``run`` recorded on a capture stream, or None where CuPy refused to
    record it (a cuBLAS call): nothing has run then."""
    stream = cupy.cuda.Stream(non_blocking=True)  # capture needs a stream other than the legacy one
    pool = cupy.cuda.MemoryPool()
    with stream, cupy.cuda.using_allocator(pool.malloc):
        stream.begin_capture()
        try:
            outputs = run()
        except NotImplementedError:
            return None
        finally:
            graph = stream.end_capture()  # leave capture mode even when the run failed
    return Graph(graph, pool, stream), outputs
