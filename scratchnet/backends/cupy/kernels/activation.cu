// ReLU forward and backward, one thread per element.
#include "common.cuh"

template <typename real>
__global__ void relu_forward(const real* __restrict__ x, real* __restrict__ y, long long total)
{
    FOR_EACH_INDEX(i, total) {
        const real value = x[i];
        y[i] = value < (real)0 ? (real)0 : value;
    }
}

template <typename real>
__global__ void relu_backward(
    const real* __restrict__ grad_y, const real* __restrict__ y, real* __restrict__ grad_x, long long total)
{
    FOR_EACH_INDEX(i, total) {
        grad_x[i] = y[i] <= (real)0 ? (real)0 : grad_y[i];  // NaN passes its gradient, as in torch
    }
}
