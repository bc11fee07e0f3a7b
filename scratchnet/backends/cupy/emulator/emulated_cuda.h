// The CUDA runtime as the emulated device sees it: included before the cupy backend's own kernels so
// the system C++ compiler builds them, unchanged, for the CPU.
//
// Each launch runs its real grid and block, blocks one after another. A kernel without barriers runs
// its threads serially; a kernel that reaches __syncthreads() runs each block's threads as fibers on
// one core, every thread running until its next barrier before any thread passes it. So __shared__
// memory (a static array: blocks never overlap) is per block, a barrier is a real barrier, and a
// missing one lets a thread read what its neighbours have not written yet, every time.
#ifndef SCRATCHNET_EMULATED_CUDA_H
#define SCRATCHNET_EMULATED_CUDA_H

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <mutex>
#include <sys/mman.h>
#include <unistd.h>
#include <utility>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
// A fiber that ended never unwound its frames: their red zones must not outlive it on a reused stack.
#define EMU_FORGET_STACK(start, size) __asan_unpoison_memory_region(start, size)
#else
#define EMU_FORGET_STACK(start, size) ((void)0)
#endif

struct dim3 {
    unsigned int x, y, z;
};

namespace emu {

inline dim3 thread_index, block_index, block_dim, grid_dim;

// __syncthreads() in a kernel launched without fibers (the sources were read as barrier-free).
struct BarrierWithoutTeam {};

constexpr unsigned max_threads_per_block = 1024;
constexpr std::size_t fiber_stack_bytes = 256 * 1024;

struct Fiber {
    void* stack_pointer;
    dim3 index;
    bool done;
};

inline Fiber fibers[max_threads_per_block];
inline char* fiber_stacks[max_threads_per_block];
inline Fiber* running_fiber;
inline void* scheduler_stack_pointer;
inline bool in_team;
inline void (*thread_body)(void*);
inline void* thread_body_context;

}  // namespace emu

// Saves the callee-saved registers on the current stack, stores its pointer in *save, continues on `load`.
extern "C" __attribute__((visibility("hidden"))) void scratchnet_emu_switch(void** save, void* load);

#if defined(__x86_64__)
asm(R"(
    .text
    .p2align 4
    .globl scratchnet_emu_switch
    .hidden scratchnet_emu_switch
    .type scratchnet_emu_switch, @function
scratchnet_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size scratchnet_emu_switch, .-scratchnet_emu_switch
)");
#else
#error "the emulated CUDA device switches fibers with x86-64 assembly; this machine is not x86-64"
#endif

namespace emu {

inline unsigned block_threads;
inline unsigned live_fibers;

// Hands the core to the next live thread of the block after `from`, in order and wrapping round:
// a thread at a barrier thus resumes only after every other live thread has reached it (or ended).
inline void pass_to_next_fiber(Fiber* from, void** save)
{
    unsigned next = (unsigned)(from - fibers);
    do next = next + 1 == block_threads ? 0 : next + 1;
    while (fibers[next].done);
    running_fiber = &fibers[next];
    thread_index = fibers[next].index;
    scratchnet_emu_switch(save, fibers[next].stack_pointer);
}

[[noreturn]] inline void fiber_main()
{
    thread_body(thread_body_context);
    Fiber* finished = running_fiber;
    finished->done = true;
    void* discarded;
    if (--live_fibers == 0) scratchnet_emu_switch(&discarded, scheduler_stack_pointer);
    else pass_to_next_fiber(finished, &discarded);
    __builtin_unreachable();
}

inline void* fresh_fiber_stack(unsigned t)
{
    static const std::size_t guard = (std::size_t)sysconf(_SC_PAGESIZE);
    if (fiber_stacks[t] == nullptr) {
        void* base = mmap(nullptr, guard + fiber_stack_bytes, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (base == MAP_FAILED) return nullptr;
        mprotect(base, guard, PROT_NONE);
        fiber_stacks[t] = static_cast<char*>(base);
    }
    EMU_FORGET_STACK(fiber_stacks[t] + guard, fiber_stack_bytes);
    // Tops staggered by cache lines: equally aligned tops would all compete for the same cache sets.
    void** top = reinterpret_cast<void**>(fiber_stacks[t] + guard + fiber_stack_bytes - 64 * (t % 64));
    *--top = nullptr;                                    // fiber_main's return address: never used
    *--top = reinterpret_cast<void*>(&fiber_main);       // where the switch's `ret` lands
    for (int saved = 0; saved < 6; ++saved) *--top = nullptr;  // rbp, rbx, r12-r15
    return top;
}

inline dim3 thread_index_of(unsigned t)
{
    return {t % block_dim.x, (t / block_dim.x) % block_dim.y, t / (block_dim.x * block_dim.y)};
}

inline void sync_threads()
{
    if (!in_team) throw BarrierWithoutTeam{};
    if (live_fibers > 1) pass_to_next_fiber(running_fiber, &running_fiber->stack_pointer);
}

// Thread 0 starts; each thread runs until its next barrier (or its end), then hands on to the next.
inline bool run_block_as_team(unsigned threads)
{
    for (unsigned t = 0; t < threads; ++t) {
        fibers[t].stack_pointer = fresh_fiber_stack(t);
        fibers[t].index = thread_index_of(t);
        fibers[t].done = false;
        if (fibers[t].stack_pointer == nullptr) return false;
    }
    block_threads = live_fibers = threads;
    in_team = true;
    running_fiber = &fibers[0];
    thread_index = fibers[0].index;
    scratchnet_emu_switch(&scheduler_stack_pointer, fibers[0].stack_pointer);
    in_team = false;
    return true;
}

inline std::mutex& launch_mutex()
{
    static std::mutex mutex;
    return mutex;
}

// geometry: grid x, y, z then block x, y, z. Returns 0, or 1 with a message in error.
inline int run_grid(const unsigned* geometry, int team, void (*body)(void*), void* context,
                    char* error, std::size_t error_size)
{
    const dim3 grid{geometry[0], geometry[1], geometry[2]}, block{geometry[3], geometry[4], geometry[5]};
    const unsigned long long threads = (unsigned long long)block.x * block.y * block.z;
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535 || grid.x > 2147483647u
        || threads == 0 || threads > max_threads_per_block || block.z > 64) {
        std::snprintf(error, error_size, "invalid configuration argument: grid (%u, %u, %u), block (%u, %u, %u)",
                      grid.x, grid.y, grid.z, block.x, block.y, block.z);
        return 1;
    }
    std::lock_guard<std::mutex> lock(launch_mutex());
    grid_dim = grid;
    block_dim = block;
    thread_body = body;
    thread_body_context = context;
    try {
        for (unsigned z = 0; z < grid.z; ++z)
            for (unsigned y = 0; y < grid.y; ++y)
                for (unsigned x = 0; x < grid.x; ++x) {
                    block_index = {x, y, z};
                    if (team) {
                        if (!run_block_as_team((unsigned)threads)) {
                            std::snprintf(error, error_size, "could not map the stacks of %llu fibers", threads);
                            return 1;
                        }
                        continue;
                    }
                    for (unsigned t = 0; t < threads; ++t) {
                        thread_index = thread_index_of(t);
                        body(context);
                    }
                }
    } catch (const BarrierWithoutTeam&) {
        std::snprintf(error, error_size, "__syncthreads() reached in a kernel launched without barriers");
        return 1;
    }
    return 0;
}

// A kernel and the launch's argument slots: slot i holds the bytes of parameter i, as CUDA's kernelParams.
template <typename... P>
struct Call {
    void (*kernel)(P...);
    void** slots;
};

template <typename... P, std::size_t... I>
inline void invoke(const Call<P...>& call, std::index_sequence<I...>)
{
    call.kernel(*static_cast<P*>(call.slots[I])...);
}

template <typename... P>
void run_thread(void* call)
{
    invoke(*static_cast<Call<P...>*>(call), std::index_sequence_for<P...>{});
}

template <typename... P>
int launch(void (*kernel)(P...), const unsigned* geometry, void** slots, int team, char* error, std::size_t error_size)
{
    Call<P...> call{kernel, slots};
    return run_grid(geometry, team, &run_thread<P...>, &call, error, error_size);
}

template <typename... P>
constexpr int arity(void (*)(P...))
{
    return (int)sizeof...(P);
}

}  // namespace emu

#define threadIdx (::emu::thread_index)
#define blockIdx (::emu::block_index)
#define blockDim (::emu::block_dim)
#define gridDim (::emu::grid_dim)
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __syncthreads() ::emu::sync_threads()

// CUDA's device maths, overloaded on the float type as in device code.
using std::ceil;
using std::erf;
using std::exp;
using std::fabs;
using std::floor;
using std::isinf;
using std::isnan;
using std::log;
using std::max;
using std::min;
using std::pow;
using std::sqrt;
using std::tanh;

#endif  // SCRATCHNET_EMULATED_CUDA_H
