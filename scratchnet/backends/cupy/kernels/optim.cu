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
