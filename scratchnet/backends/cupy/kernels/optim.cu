// Optimizer updates, one thread per parameter element.
#include "common.cuh"

// torch.optim.SGD in place. buf may be grad itself when there is no momentum (then unused).
template <typename real>
__global__ void sgd_step(
    real* param, const real* grad, real* buf, long long total, real lr, real momentum,
    real one_minus_dampening, real weight_decay, int nesterov, int first)
{
    FOR_EACH_INDEX(i, total) {
        real step = grad[i];
        if (weight_decay != (real)0) step = step + weight_decay * param[i];
        if (momentum != (real)0) {
            const real velocity = first ? step : buf[i] * momentum + one_minus_dampening * step;
            buf[i] = velocity;
            step = nesterov ? step + momentum * velocity : velocity;
        }
        param[i] = param[i] - lr * step;
    }
}

// torch.optim.Adam (and AdamW, through decay) in place; see Backend.adam_step. max_exp_avg_sq is read
// and written only with amsgrad.
template <typename real>
__global__ void adam_step(
    real* param, const real* grad, real* exp_avg, real* exp_avg_sq, real* max_exp_avg_sq, long long total,
    real weight_decay, real decay, real weight, real beta2, real one_minus_beta2, real eps, real neg_step_size,
    real bias_correction2_sqrt, int amsgrad, int maximize)
{
    FOR_EACH_INDEX(i, total) {
        real g = maximize ? -grad[i] : grad[i];
        if (weight_decay != (real)0) g = g + weight_decay * param[i];
        const real p = decay != (real)1 ? param[i] * decay : param[i];
        // torch's lerp, exact at both ends
        const real m = weight < (real)0.5 ? exp_avg[i] + weight * (g - exp_avg[i])
                                          : g - (g - exp_avg[i]) * ((real)1 - weight);
        exp_avg[i] = m;
        real v = exp_avg_sq[i] * beta2 + one_minus_beta2 * g * g;
        exp_avg_sq[i] = v;
        if (amsgrad) {
            v = max(max_exp_avg_sq[i], v);
            max_exp_avg_sq[i] = v;
        }
        param[i] = p + neg_step_size * m / (sqrt(v) / bias_correction2_sqrt + eps);
    }
}
