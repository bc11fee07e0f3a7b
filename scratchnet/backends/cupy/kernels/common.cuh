// What every kernel family shares: the grid-stride loop, NCHW index decoding and the block reduction.
//
// Every kernel gathers: each output element is written by exactly one thread (or one block with a
// fixed-shape tree reduction), so no atomics are needed and every run is bit-for-bit the same.
// Layouts follow torch: NCHW activations, (O, C, KH, KW) conv weights, flat h * W + w max-pool
// indices per plane. Kernels are templates on the float type (`real`: float or double).
#ifndef SCRATCHNET_COMMON_CUH
#define SCRATCHNET_COMMON_CUH

// Threads per block of the block-reduction kernels; their shared arrays have this many slots.
constexpr int REDUCE_THREADS = 128;

// Each thread visits i, i + stride, ... so any grid size covers any element count.
#define FOR_EACH_INDEX(i, total) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (total); \
         i += (long long)blockDim.x * gridDim.x)

// The position of flat element i of a C-contiguous (images, channels, height, width) array.
// Also decodes (O, C, KH, KW) weight positions: img is then the output channel, row/col the tap.
struct NchwIndex {
    int img, ch, row, col;
    __device__ NchwIndex(long long i, int channels, int height, int width)
        : img((int)(i / ((long long)width * height * channels))),
          ch((int)((i / ((long long)width * height)) % channels)),
          row((int)((i / width) % height)),
          col((int)(i % width)) {}
};

// The position of flat element i of a C-contiguous stack of (height, width) planes.
struct PlaneIndex {
    long long plane;
    int row, col;
    __device__ PlaneIndex(long long i, int height, int width)
        : plane(i / ((long long)width * height)), row((int)((i / width) % height)), col((int)(i % width)) {}
};

// Sum REDUCE_THREADS partial sums of one block in a fixed tree order; every thread gets the total.
template <typename real>
__device__ real block_sum(real value, real* partial)
{
    partial[threadIdx.x] = value;
    __syncthreads();
    for (int half = REDUCE_THREADS / 2; half > 0; half >>= 1) {
        if ((int)threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
        __syncthreads();
    }
    return partial[0];
}

#endif  // SCRATCHNET_COMMON_CUH
