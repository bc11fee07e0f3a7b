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

// ---- the next chapter's activations: kind indexes base.ACTIVATIONS -----------------------------------
// gelu, gelu_tanh, silu, leaky_relu (alpha: the negative slope), tanh, sigmoid: torch's formulas.

constexpr double SQRT1_2 = 0.70710678118654752440;
constexpr double SQRT_2_OVER_PI = 0.79788456080286535588;
constexpr double GELU_PDF = 0.39894228040143267794;  // 1 / sqrt(2 pi)
constexpr double KAPPA = 0.044715;

template <typename real>
__device__ real activation_value(real x, int kind, real alpha)
{
    switch (kind) {
    case 0: return x * (real)0.5 * ((real)1 + erf(x * (real)SQRT1_2));
    case 1: return (real)0.5 * x * ((real)1 + tanh((real)SQRT_2_OVER_PI * (x + (real)KAPPA * x * x * x)));
    case 2: return x / ((real)1 + exp(-x));
    case 3: return x > (real)0 ? x : x * alpha;
    case 4: return tanh(x);
    default: return (real)1 / ((real)1 + exp(-x));
    }
}

template <typename real>
__device__ real activation_derivative(real x, real y, int kind, real alpha)
{
    switch (kind) {
    case 0: {
        const real cdf = (real)0.5 * ((real)1 + erf(x * (real)SQRT1_2));
        const real pdf = exp((real)-0.5 * x * x) * (real)GELU_PDF;
        return cdf + x * pdf;
    }
    case 1: {
        const real t = tanh((real)SQRT_2_OVER_PI * (x + (real)KAPPA * x * x * x));
        const real left = (real)0.5 * x;
        return (real)0.5 * ((real)1 + t)
             + left * ((real)1 - t * t) * (real)SQRT_2_OVER_PI * ((real)1 + (real)(3 * KAPPA) * x * x);
    }
    case 2: {
        const real sigmoid = (real)1 / ((real)1 + exp(-x));
        return sigmoid * ((real)1 + x * ((real)1 - sigmoid));
    }
    case 3: return x > (real)0 ? (real)1 : alpha;
    case 4: return (real)1 - y * y;
    default: return ((real)1 - y) * y;
    }
}

template <typename real>
__global__ void activation_forward(const real* __restrict__ x, real* __restrict__ y, long long total, int kind,
                                   real alpha)
{
    FOR_EACH_INDEX(i, total) {
        y[i] = activation_value(x[i], kind, alpha);
    }
}

template <typename real>
__global__ void activation_backward(const real* __restrict__ grad_y, const real* __restrict__ x,
                                    const real* __restrict__ y, real* __restrict__ grad_x, long long total, int kind,
                                    real alpha)
{
    FOR_EACH_INDEX(i, total) {
        // leaky_relu scales the gradient by the slope (no multiply by 1 where x > 0), as torch
        grad_x[i] = kind == 3 ? (x[i] > (real)0 ? grad_y[i] : grad_y[i] * alpha)
                              : grad_y[i] * activation_derivative(x[i], y[i], kind, alpha);
    }
}

// y = x * (keep * scale): dropout's forward, and with the output gradient for x its backward.
template <typename real>
__global__ void dropout_apply(const real* __restrict__ x, const bool* __restrict__ keep, real* __restrict__ y,
                              long long total, real scale)
{
    FOR_EACH_INDEX(i, total) {
        y[i] = x[i] * (keep[i] ? scale : (real)0);
    }
}
