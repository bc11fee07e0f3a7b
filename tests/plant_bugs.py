"""Plants realistic bugs in the CUDA sources, the cupy backend's glue and the numba backend's matrix-product
convolutions, BLAS calls and next-chapter kernels, one at a time, and checks that the test suite (the cupy
cases on the emulated device, or the selection a bug names) catches each.

    python tests/plant_bugs.py [NAME ...]

Each bug is an exact text replacement in one file (restored afterwards, whatever happens); its tests
run with the cupy backend on the emulated device and must fail. Prints one line per bug (caught or
MISSED, and the first failing test) and exits non-zero if any bug was missed.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KERNELS = "scratchnet/backends/cupy/kernels/"
BACKEND = "scratchnet/backends/cupy/backend.py"
OPS = ["tests/test_ops.py", "tests/test_conv2d_features.py", "tests/test_max_pool2d_features.py",
       "tests/test_linear_relu_features.py", "tests/test_cross_entropy_features.py", "tests/test_cupy_backend.py"]

GEMM_CONV = "scratchnet/backends/numba/gemm_conv.py"
BLAS = "scratchnet/backends/numba/blas.py"
POOLING = "scratchnet/backends/numba/pooling.py"
WIDE = ["tests/test_wide_conv.py"]

# name: (file, text, replacement, tests[, the tests' -k selection: the cupy ones unless given])
BUGS = {
    "conv forward: off-by-one in the column bound": (
        KERNELS + "conv.cu", "if (ix < 0 || ix >= w) continue;\n                acc += plane[(long long)iy * w + ix]",
        "if (ix < 0 || ix > w) continue;\n                acc += plane[(long long)iy * w + ix]", OPS),
    "conv input gradient: weight read with O and C strides swapped": (
        KERNELS + "conv.cu", "* weight[(((long long)out_ch * c + in.ch) * kh + ki) * kw + kj];",
        "* weight[(((long long)in.ch * o + out_ch) * kh + ki) * kw + kj];", OPS),
    "conv weight gradient: the tap's row used for its column": (
        KERNELS + "conv.cu", "const int ix = (spot % ow) * stride - pad + tap.col;",
        "const int ix = (spot % ow) * stride - pad + tap.row;", OPS),
    "im2col: the bias row of ones written as zeros": (
        KERNELS + "conv.cu", "if (tap == taps) { cols[i] = 1; continue; }", "if (tap == taps) { cols[i] = 0; continue; }",
        ["tests/test_cupy_backend.py"]),
    "block reduction: a missing __syncthreads() in the tree": (
        KERNELS + "common.cuh",
        "partial[threadIdx.x] += partial[threadIdx.x + half];\n        __syncthreads();",
        "partial[threadIdx.x] += partial[threadIdx.x + half];", OPS),
    "max-pool forward: ties go to the last element": (
        KERNELS + "pool.cu", "if (value > best || isnan(value)) { best = value; best_index = index; }",
        "if (value >= best || isnan(value)) { best = value; best_index = index; }", OPS),
    "max-pool backward: the output plane strided by the input's size": (
        KERNELS + "pool.cu", "const long long first = in.plane * oh * ow;\n        const int self = in.row * w + in.col;\n"
        "        // Windows", "const long long first = in.plane * h * w;\n        const int self = in.row * w + in.col;\n"
        "        // Windows", OPS),
    "dense product: b read with its column stride for rows": (
        KERNELS + "dense.cu", "acc += a_r[k * a_col] * b_j[k * b_row];", "acc += a_r[k * a_col] * b_j[k * b_col];", OPS),
    "ReLU backward: the gradient passes at zero": (
        KERNELS + "activation.cu", "grad_x[i] = y[i] <= (real)0 ? (real)0 : grad_y[i];",
        "grad_x[i] = y[i] < (real)0 ? (real)0 : grad_y[i];", OPS),
    "cross-entropy: the weighted mean divided by the row count": (
        KERNELS + "loss.cu", "divisor[0] = mean ? denominator : (real)1;", "divisor[0] = mean ? (real)rows : (real)1;",
        OPS),
    # -100 as int32 in a long long slot reads 2**32 - 100: the ignored row writes outside its row, which
    # only AddressSanitizer sees (the row's loss and the garbage weight it reads barely move the mean).
    "glue: ignore_index passed as int32 to a long long parameter": (
        BACKEND, "*_ints(rows, classes), np.int64(ignore_index),", "*_ints(rows, classes), np.int32(ignore_index),",
        ["tests/test_cuda_emulator.py"]),
    "glue: label smoothing passed as a Python float (a double) to a float kernel": (
        BACKEND, "dtype.type(label_smoothing), np.int32(probabilities)", "label_smoothing, np.int32(probabilities)",
        OPS),
    "glue: SGD's learning rate passed as a Python float (a double) to a float kernel": (
        BACKEND, "param, grad, buf, np.int64(param.size), real(lr),", "param, grad, buf, np.int64(param.size), lr,",
        ["tests/test_optim.py", "tests/test_training_parity.py"]),
    "glue: block reductions launched with the element-wise block size": (
        BACKEND, "self._kernel(dtype, name)((blocks,), (_REDUCE_THREADS,), args)",
        "self._kernel(dtype, name)((blocks,), (_THREADS,), args)", OPS),
    "graph replay: the new batch's labels not copied in": (
        "scratchnet/step.py", "        xp.copyto(self._labels, labels)\n", "",
        ["tests/test_cupy_backend.py", "tests/test_compile_step.py"]),
    "GEMM conv: the packed weights' tap rows and columns swapped": (
        GEMM_CONV, "= weight.transpose(0, 2, 3, 1)", "= weight.transpose(0, 3, 2, 1)", WIDE, "gemm"),
    "GEMM conv: the bias's row of ones left at zero": (
        GEMM_CONV, "self.cols[:, self.size] = 1", "self.cols[:, self.size] = 0", WIDE, "gemm"),
    "GEMM conv: the planes' gradient misses its last tap row": (
        GEMM_CONV, "        for i in range(kh):\n            add(", "        for i in range(kh - 1):\n            add(", WIDE,
        "gemm"),
    "GEMM conv: each part's weight gradient only its first group's": (
        GEMM_CONV, "0.0 if g == bounds[part] else 1.0", "0.0", WIDE, "gemm"),
    "GEMM conv: the columns laid out with the kernel's rows and columns swapped": (
        GEMM_CONV, "copy(cols[(i * kw + j) * c + ci]", "copy(cols[(j * kh + i) * c + ci]", WIDE, "gemm"),
    "GEMM conv: the parts' weight gradients not summed": (
        GEMM_CONV, "sums[0] += sums[part]", "pass", WIDE, "gemm"),
    "GEMM conv, views: the bias not laid down before the tap rows' products": (
        GEMM_CONV, "fill(out[o], packed[o, row_length])", "fill(out[o], 0)", WIDE, "gemm"),
    "GEMM conv, views: the tap rows read in reverse": (
        GEMM_CONV, "width, group_planes[i * span:], plane_length, 1.0, out,",
        "width, group_planes[(kh - 1 - i) * span:], plane_length, 1.0, out,", WIDE, "gemm"),
    "GEMM conv, views: the bias gradient only the part's last group's": (
        GEMM_CONV, "(part_sums[o, row_length] if beta else 0)", "0", WIDE, "gemm"),
    "GEMM conv, views: the planes' gradient not cleared before the tap rows add into it": (
        GEMM_CONV, "                fill(group_grad, 0)\n", "", WIDE, "gemm"),
    "2x2 max-pool: a NaN in the window not taken": (
        POOLING, "better = (value > best) | (value != value)", "better = value > best",
        ["tests/test_max_pool2d_features.py"], "2x2 and numba"),
    "2x2 max-pool: the last of equal maxima taken": (
        POOLING, "better = (value > best) | (value != value)", "better = (value >= best) | (value != value)",
        ["tests/test_max_pool2d_features.py"], "2x2 and numba"),
    "batch norm: the input gradient's mean term dropped": (
        "scratchnet/backends/numba/norm.py", "out[s] = (grads[s] - shift - (row[s] - m) * factor) * scale",
        "out[s] = (grads[s] - (row[s] - m) * factor) * scale", ["tests/test_next_chapter_ops.py"], "numba and norm"),
    "BLAS call: the operands' transposes swapped": (
        BLAS, "builder.trunc(context.cast(builder, trans_a, signature.args[1], types.int64), int32),\n"
              "                builder.trunc(context.cast(builder, trans_b, signature.args[2], types.int64), int32),",
        "builder.trunc(context.cast(builder, trans_b, signature.args[2], types.int64), int32),\n"
        "                builder.trunc(context.cast(builder, trans_a, signature.args[1], types.int64), int32),",
        ["tests/test_blas.py"], "blas"),
    "BLAS call: beta ignored (every product overwrites)": (
        BLAS, "context.cast(builder, beta, signature.args[10], signature.args[-2].dtype)",
        "ir.Constant(float_type, 0.0)", ["tests/test_blas.py", "tests/test_wide_conv.py"], "blas or gemm"),
}


def plant_and_test(name):
    path, text, replacement, tests, *selection = BUGS[name]
    file = REPO / path
    original = file.read_text()
    if original.count(text) != 1:
        raise SystemExit(f"{name}: the text to replace occurs {original.count(text)} times in {path}, not once")
    try:
        file.write_text(original.replace(text, replacement))
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-k",
             selection[0] if selection else "cupy or sanitizer", *tests],
            cwd=REPO, capture_output=True, text=True, env={**os.environ, "SCRATCHNET_CUDA_EMULATOR": "1"})
    finally:
        file.write_text(original)
    failed = re.findall(r"^FAILED (\S+)", result.stdout, re.MULTILINE)
    if result.returncode < 0:  # the test process died, as a faulting GPU launch ends its process: caught
        return True, f"the test process died of signal {-result.returncode}"
    return result.returncode == 1 and bool(failed), failed[0] if failed else (result.stdout.strip() or "?").splitlines()[-1]


def main(names):
    missed = 0
    for name in names or BUGS:
        caught, evidence = plant_and_test(name)
        missed += not caught
        print(f"{'caught' if caught else 'MISSED'}  {name}  <-  {evidence}", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
