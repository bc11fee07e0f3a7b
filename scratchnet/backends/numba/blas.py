"""numpy's BLAS matrix product (GEMM), callable from inside our numba kernels.

numpy ships with a BLAS (OpenBLAS in its wheels). ``find_gemm`` finds that library's
CBLAS ``?gemm`` through threadpoolctl and returns its address, and the ``gemm``
intrinsic calls a routine by address from nopython code. The address is an argument,
not a constant in the compiled code, so the kernels stay in numba's on-disk cache.
Called from a ``prange`` loop, each product runs on the numba thread that calls it
while BLAS is held to one thread (``one_blas_thread``): the products of one kernel
share the cores without a second thread pool, and a product on one thread repeats bit
for bit. Where no CBLAS is found, ``find_gemm`` returns None and the convolutions stay
on our own kernels.
"""

import ctypes
import functools

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic
from threadpoolctl import ThreadpoolController

# CBLAS's enum values: row-major storage, and whether an operand is read transposed.
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112


class Gemm:
    """A CBLAS ``?gemm`` by address (``routine``), and whether it takes 64-bit sizes (an ILP64 build)."""

    def __init__(self, address, wide_sizes):
        self.routine = np.array([address, int(wide_sizes)], np.int64)


# (symbol, 64-bit sizes) per library, the float32 name's ``{}`` filled with 's', float64 with 'd'.
_OPENBLAS_SYMBOLS = (("scipy_cblas_{}gemm64_", True), ("cblas_{}gemm64_", True), ("scipy_cblas_{}gemm", None),
                     ("cblas_{}gemm", None))
_LP64_SYMBOLS = (("cblas_{}gemm", False),)


@functools.cache
def find_gemm(dtype):
    """The ``Gemm`` of numpy's BLAS for float32 or float64 ``dtype``, or None where none is found."""
    letter = {np.dtype(np.float32): "s", np.dtype(np.float64): "d"}.get(np.dtype(dtype))
    if letter is None:
        return None
    for library in _blas_controller().lib_controllers:
        found = library.user_api == "blas" and gemm_in(library.filepath, library.internal_api, letter)
        if found:
            return found
    return None


def gemm_in(path, internal_api, letter):
    """The ``Gemm`` of the BLAS library at ``path`` (threadpoolctl's ``internal_api`` names which library it is)
    for 's' (float32) or 'd' (float64), or None."""
    try:
        handle = ctypes.CDLL(path)
    except OSError:
        return None
    for name, wide_sizes in _OPENBLAS_SYMBOLS if internal_api == "openblas" else _LP64_SYMBOLS:
        routine = getattr(handle, name.format(letter), None)
        if routine is not None:
            if wide_sizes is None:  # an unsuffixed OpenBLAS name: its build says how wide its sizes are
                wide_sizes = _openblas_ilp64(handle)
            return Gemm(ctypes.cast(routine, ctypes.c_void_p).value, wide_sizes)
    return None


def _openblas_ilp64(handle):
    config = getattr(handle, "openblas_get_config", None) or getattr(handle, "scipy_openblas_get_config", None)
    if config is None:
        return False
    config.restype = ctypes.c_char_p
    return b"USE64BITINT" in (config() or b"")


def one_blas_thread():
    """A context in which numpy's BLAS runs each product on the thread that calls it."""
    return _blas_controller().limit(limits=1, user_api="blas")


@functools.cache
def _blas_controller():
    return ThreadpoolController()


@intrinsic
def gemm(typingctx, routine, trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc):
    """``c = op(a) @ op(b) + beta * c`` (row-major; ``op`` transposes where ``trans_*`` is ``TRANS``) through the
    routine of a ``Gemm`` (``Gemm.routine``); ``a``, ``b``, ``c`` are arrays whose data pointers start the matrices,
    with ``lda``, ``ldb``, ``ldc`` elements between their rows."""
    if not all(isinstance(t, types.Array) and t.dtype == c.dtype for t in (a, b, c)) or \
            c.dtype not in (types.float32, types.float64):
        return None
    sig = types.void(routine, trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc)

    def codegen(context, builder, signature, args):
        routine, trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc = args
        float_type = context.get_value_type(signature.args[-2].dtype)
        pointer = float_type.as_pointer()
        int32, int64 = ir.IntType(32), ir.IntType(64)
        routine_array = context.make_array(signature.args[0])(context, builder, routine)
        address = builder.load(routine_array.data)
        wide = builder.load(builder.gep(routine_array.data, [ir.Constant(int64, 1)]))

        def data(value, index):
            return builder.bitcast(context.make_array(signature.args[index])(context, builder, value).data, pointer)

        def size(value, index, size_type):
            return context.cast(builder, value, signature.args[index], types.int64) if size_type == int64 else \
                builder.trunc(context.cast(builder, value, signature.args[index], types.int64), int32)

        def call(size_type):
            function_type = ir.FunctionType(ir.VoidType(), [int32, int32, int32, size_type, size_type, size_type,
                                                            float_type, pointer, size_type, pointer, size_type,
                                                            float_type, pointer, size_type])
            function = builder.inttoptr(address, function_type.as_pointer())
            builder.call(function, [
                ir.Constant(int32, ROW_MAJOR),
                builder.trunc(context.cast(builder, trans_a, signature.args[1], types.int64), int32),
                builder.trunc(context.cast(builder, trans_b, signature.args[2], types.int64), int32),
                size(m, 3, size_type), size(n, 4, size_type), size(k, 5, size_type),
                ir.Constant(float_type, 1.0), data(a, 6), size(lda, 7, size_type), data(b, 8), size(ldb, 9, size_type),
                context.cast(builder, beta, signature.args[10], signature.args[-2].dtype),
                data(c, 11), size(ldc, 12, size_type)])

        with builder.if_else(builder.icmp_unsigned("!=", wide, ir.Constant(int64, 0))) as (wide_sizes, narrow_sizes):
            with wide_sizes:
                call(int64)
            with narrow_sizes:
                call(int32)
        return context.get_dummy_value()

    return sig, codegen
