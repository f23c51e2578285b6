// Host emulation of cooperative CUDA C: __shared__ memory, block barriers and warp-level
// operations. kernels/emu.py appends this header to emu_shim.h, with GPUCNN_EMU_COOPERATIVE
// defined, for a source that uses any of them; other sources keep the one-thread-at-a-time
// launcher of emu_shim.h.
//
// Every thread of a block is a fiber (ucontext) on the launching OS thread. The scheduler
// runs each fiber until it waits (at __syncthreads or a warp operation) or returns, in
// thread order, then releases a barrier once every thread of the block waits at it, and a
// warp operation once every lane of its mask has called it. Blocks run one after another.
//
// __shared__ declarations are rewritten by kernels/emu.py into Shared<T, dims...> objects,
// one per OS thread, reused by every block. Each access goes through a checker that keeps,
// per element, the last write and the last two reading threads with the moment of access;
// two accesses from different threads, at least one a write, with no barrier between them
// (a __syncthreads of the block, or a __syncwarp both lanes took part in) are a race, as
// compute-sanitizer --tool racecheck reports it.
//
// A fault (a race, a barrier or warp operation that cannot complete, an index outside a
// __shared__ array) stops the launch after the current block (at once when the block cannot
// go on) and gpucnn_emu_launch_<id> returns its code, with the message in gpucnn_emu_error().
#ifndef GPUCNN_EMU_COOPERATIVE_H
#define GPUCNN_EMU_COOPERATIVE_H

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace gpucnn_emu {

constexpr unsigned kWarpSize = 32;
constexpr unsigned kMaxBlockThreads = 1024;
constexpr std::size_t kFiberStack = 64 * 1024;

enum class State : unsigned char { runnable, barrier, warp, done };
enum class Barrier : unsigned char { plain, count, all, any };
enum class WarpOp : unsigned char { sync, shfl, shfl_up, shfl_down, shfl_xor, ballot, any, all };

inline const char* barrier_name(Barrier kind) {
    static const char* const names[] = {"__syncthreads()", "__syncthreads_count()", "__syncthreads_and()",
                                        "__syncthreads_or()"};
    return names[static_cast<int>(kind)];
}

inline const char* warp_op_name(WarpOp op) {
    static const char* const names[] = {"__syncwarp",    "__shfl_sync",   "__shfl_up_sync", "__shfl_down_sync",
                                        "__shfl_xor_sync", "__ballot_sync", "__any_sync",     "__all_sync"};
    return names[static_cast<int>(op)];
}

struct Fiber {
    ucontext_t context;
    uint3 thread;
    State state;
    // at a barrier
    Barrier barrier;
    const char* barrier_file;
    int barrier_line;
    int predicate;
    int barrier_result;
    // at a warp operation
    WarpOp op;
    unsigned mask;
    std::uint64_t value;
    int param;
    int width;
    std::uint64_t warp_result;
};

// One access to a shared element: the block-linear thread and the moment (0: none).
struct Access {
    unsigned thread;
    std::uint64_t moment;
};

struct Shadow {
    Access write;
    Access read[2];
};

struct SharedInfo {
    const char* name;
    int rank;
    long dims[4];
};

// Fault codes, as kernels/emu.py reads them.
enum Fault : int { kNone = 0, kRace = 1, kSync = 2, kOther = 3 };

struct Block {
    const char* kernel;
    void (*invoke)(void*);
    void* call;
    Fiber* fibers;
    unsigned count;
    unsigned current;
    ucontext_t scheduler;
    std::uint64_t interval_start;  // the moment the current barrier interval began
    // joint[(warp * 32 + a) * 32 + b]: the moment of the last __syncwarp lanes a and b both took part in
    std::vector<std::uint64_t> joint;
    int fault;
    bool stop;  // the block cannot go on: its fibers are abandoned
    std::string message;
    long races;
};

inline thread_local Block* active = nullptr;
// Moments: barrier intervals and __syncwarp calls, increasing for the OS thread's lifetime,
// so that a shared element's history from an earlier block or launch is always stale.
inline thread_local std::uint64_t moments = 0;

inline std::string thread_name(const Block& b, unsigned linear) {
    const uint3 t = b.fibers[linear].thread;
    return "(" + std::to_string(t.x) + ", " + std::to_string(t.y) + ", " + std::to_string(t.z) + ")";
}

inline std::string block_name() {
    return "(" + std::to_string(blockIdx.x) + ", " + std::to_string(blockIdx.y) + ", " + std::to_string(blockIdx.z) +
           ")";
}

inline std::string where(const Block& b) {
    return std::string(b.kernel) + ", block " + block_name();
}

// A fault that ends the block: record it and leave the fiber for good.
[[noreturn]] inline void fail(int code, const std::string& message) {
    Block& b = *active;
    if (b.fault == kNone || b.fault == kRace) {
        b.fault = code;
        b.message = message;
    }
    b.stop = true;
    swapcontext(&b.fibers[b.current].context, &b.scheduler);
    __builtin_unreachable();
}

// -- shared memory and its race checker -------------------------------------------------------

inline std::string element_name(const SharedInfo& info, long flat) {
    std::string index;
    for (int axis = info.rank - 1; axis >= 0; --axis) {
        index = "[" + std::to_string(flat % info.dims[axis]) + "]" + index;
        flat /= info.dims[axis];
    }
    return info.name + index;
}

// Whether access `a` happens before an access by `thread` now: an earlier barrier
// interval, the same thread, or a __syncwarp both lanes took part in since.
inline bool ordered(const Block& b, const Access& a, unsigned thread) {
    if (a.moment < b.interval_start || a.thread == thread) {
        return true;
    }
    if (a.thread / kWarpSize != thread / kWarpSize || b.joint.empty()) {
        return false;
    }
    return b.joint[static_cast<std::size_t>(a.thread) * kWarpSize + thread % kWarpSize] > a.moment;
}

inline void report_race(const SharedInfo& info, long flat, bool writes, const Access& other, bool other_wrote) {
    Block& b = *active;
    ++b.races;
    if (b.fault != kNone) {
        return;
    }
    b.fault = kRace;
    b.message = "shared memory race in " + where(b) + ": thread " + thread_name(b, b.current) +
                (writes ? " writes " : " reads ") + element_name(info, flat) + ", which thread " +
                thread_name(b, other.thread) + (other_wrote ? " wrote" : " read") +
                " in the same barrier interval (no __syncthreads() between the two accesses)";
}

inline void note_access(const SharedInfo& info, Shadow& shadow, long flat, bool write) {
    Block& b = *active;
    const unsigned self = b.current;
    const Access now{self, moments};
    if (shadow.write.moment != 0 && !ordered(b, shadow.write, self)) {
        report_race(info, flat, write, shadow.write, true);
    }
    if (write) {
        for (const Access& read : shadow.read) {
            if (read.moment != 0 && !ordered(b, read, self)) {
                report_race(info, flat, true, read, false);
                break;
            }
        }
        shadow.write = now;
        return;
    }
    // Keep two distinct readers: a later writer races with one of them unless it is both.
    Access* slot = &shadow.read[1];
    for (Access& read : shadow.read) {
        if (read.moment < b.interval_start || read.thread == self) {
            slot = &read;
            break;
        }
    }
    *slot = now;
}

// One element of a __shared__ array: reads and writes go through the checker.
template <typename T>
class SharedRef {
  public:
    SharedRef(T* element, Shadow* shadow, const SharedInfo* info, long flat)
        : element_(element), shadow_(shadow), info_(info), flat_(flat) {}

    operator T() const {
        note_access(*info_, *shadow_, flat_, false);
        return *element_;
    }
    SharedRef& operator=(const T& value) {
        note_access(*info_, *shadow_, flat_, true);
        *element_ = value;
        return *this;
    }
    SharedRef& operator=(const SharedRef& other) { return *this = static_cast<T>(other); }

    template <typename U> SharedRef& operator+=(const U& v) { return *this = static_cast<T>(T(*this) + v); }
    template <typename U> SharedRef& operator-=(const U& v) { return *this = static_cast<T>(T(*this) - v); }
    template <typename U> SharedRef& operator*=(const U& v) { return *this = static_cast<T>(T(*this) * v); }
    template <typename U> SharedRef& operator/=(const U& v) { return *this = static_cast<T>(T(*this) / v); }
    template <typename U> SharedRef& operator%=(const U& v) { return *this = static_cast<T>(T(*this) % v); }
    template <typename U> SharedRef& operator&=(const U& v) { return *this = static_cast<T>(T(*this) & v); }
    template <typename U> SharedRef& operator|=(const U& v) { return *this = static_cast<T>(T(*this) | v); }
    template <typename U> SharedRef& operator^=(const U& v) { return *this = static_cast<T>(T(*this) ^ v); }
    template <typename U> SharedRef& operator<<=(const U& v) { return *this = static_cast<T>(T(*this) << v); }
    template <typename U> SharedRef& operator>>=(const U& v) { return *this = static_cast<T>(T(*this) >> v); }
    SharedRef& operator++() { return *this += 1; }
    SharedRef& operator--() { return *this -= 1; }
    T operator++(int) {
        const T old = *this;
        *this = static_cast<T>(old + 1);
        return old;
    }
    T operator--(int) {
        const T old = *this;
        *this = static_cast<T>(old - 1);
        return old;
    }

  private:
    T* element_;
    Shadow* shadow_;
    const SharedInfo* info_;
    long flat_;
};

// The axes `axis` .. rank-1 of a __shared__ array, the earlier ones fixed (`offset`).
template <typename T, int Rank>
class SharedView {
  public:
    SharedView(T* data, Shadow* shadow, const SharedInfo* info, long offset, int axis)
        : data_(data), shadow_(shadow), info_(info), offset_(offset), axis_(axis) {}

    auto operator[](long i) const {
        const long extent = info_->dims[axis_];
        if (i < 0 || i >= extent) {
            fail(kOther, "index " + std::to_string(i) + " out of bounds for axis " + std::to_string(axis_) +
                             " of __shared__ " + info_->name + " (size " + std::to_string(extent) + ") in " +
                             where(*active) + ", thread " + thread_name(*active, active->current));
        }
        const long flat = offset_ * extent + i;
        if constexpr (Rank == 1) {
            return SharedRef<T>(data_ + flat, shadow_ + flat, info_, flat);
        } else {
            return SharedView<T, Rank - 1>(data_, shadow_, info_, flat, axis_ + 1);
        }
    }

  private:
    T* data_;
    Shadow* shadow_;
    const SharedInfo* info_;
    long offset_;
    int axis_;
};

// A `__shared__ T name[D0][D1]...;` declaration, as kernels/emu.py rewrites it:
// `static thread_local Shared<T, (D0), (D1)> name{"name"};`.
template <typename T, long... Dims>
class Shared {
    static_assert(sizeof...(Dims) <= 4, "cuda-emu emulates __shared__ arrays of at most 4 dimensions");
    static_assert(std::is_arithmetic_v<T>, "cuda-emu emulates __shared__ arrays of arithmetic types only");
    static constexpr long kSize = (Dims * ... * 1L);

  public:
    explicit Shared(const char* name) : data_(kSize), shadow_(kSize), info_{name, sizeof...(Dims), {Dims...}} {}

    auto operator[](long i) {
        static_assert(sizeof...(Dims) > 0, "a __shared__ scalar is not indexed");
        return SharedView<T, sizeof...(Dims)>(data_.data(), shadow_.data(), &info_, 0, 0)[i];
    }

    // A __shared__ scalar (no dimensions) reads and assigns as its one element.
    SharedRef<T> ref() { return SharedRef<T>(data_.data(), shadow_.data(), &info_, 0); }
    operator T() { return ref(); }
    Shared& operator=(const T& value) {
        ref() = value;
        return *this;
    }
    template <typename U> Shared& operator+=(const U& v) { return ref() += v, *this; }
    template <typename U> Shared& operator-=(const U& v) { return ref() -= v, *this; }
    template <typename U> Shared& operator*=(const U& v) { return ref() *= v, *this; }
    template <typename U> Shared& operator/=(const U& v) { return ref() /= v, *this; }
    template <typename U> Shared& operator|=(const U& v) { return ref() |= v, *this; }
    template <typename U> Shared& operator&=(const U& v) { return ref() &= v, *this; }

  private:
    std::vector<T> data_;
    std::vector<Shadow> shadow_;
    SharedInfo info_;
};

// -- barriers ---------------------------------------------------------------------------------

inline void wait(State state) {
    Block& b = *active;
    Fiber& self = b.fibers[b.current];
    self.state = state;
    swapcontext(&self.context, &b.scheduler);
}

inline int syncthreads(Barrier kind, int predicate, const char* file, int line) {
    Fiber& self = active->fibers[active->current];
    self.barrier = kind;
    self.predicate = predicate != 0;
    self.barrier_file = file;
    self.barrier_line = line;
    wait(State::barrier);
    return self.barrier_result;
}

// Every thread not yet done waits at a barrier: release it, or fail when some thread
// returned without it or the threads wait at different barriers.
inline void release_barrier(Block& b) {
    const Fiber* first = nullptr;
    int count = 0;
    for (unsigned t = 0; t < b.count; ++t) {
        const Fiber& f = b.fibers[t];
        if (f.state == State::done) {
            for (unsigned w = 0; w < b.count; ++w) {
                if (b.fibers[w].state == State::barrier) {
                    const Fiber& waiting = b.fibers[w];
                    b.current = w;
                    b.fault = kSync;
                    b.message = "divergent barrier in " + where(b) + ": thread " + thread_name(b, w) + " waits at " +
                                barrier_name(waiting.barrier) + " (" + waiting.barrier_file + ":" +
                                std::to_string(waiting.barrier_line) + ") that thread " + thread_name(b, t) +
                                " never reaches: it returned (every thread of a block must reach each barrier)";
                    b.stop = true;
                    return;
                }
            }
        }
        if (first == nullptr) {
            first = &f;
        } else if (f.barrier_line != first->barrier_line || std::strcmp(f.barrier_file, first->barrier_file) != 0 ||
                   f.barrier != first->barrier) {
            b.fault = kSync;
            b.message = "divergent barrier in " + where(b) + ": thread " + thread_name(b, 0) + " waits at " +
                        barrier_name(first->barrier) + " (" + first->barrier_file + ":" +
                        std::to_string(first->barrier_line) + "), thread " + thread_name(b, t) + " at " +
                        barrier_name(f.barrier) + " (" + f.barrier_file + ":" + std::to_string(f.barrier_line) + ")";
            b.stop = true;
            return;
        }
        count += f.predicate;
    }
    int result = count;
    if (first->barrier == Barrier::all) {
        result = count == static_cast<int>(b.count);
    } else if (first->barrier == Barrier::any) {
        result = count > 0;
    }
    b.interval_start = ++moments;
    for (unsigned t = 0; t < b.count; ++t) {
        b.fibers[t].barrier_result = result;
        b.fibers[t].state = State::runnable;
    }
}

// -- warp operations: a rendezvous of the lanes in the mask --------------------------------------

// "0, 4-7": the lanes set in `lanes`, runs as ranges.
inline std::string lane_list(unsigned lanes) {
    std::string text;
    for (unsigned lane = 0; lane < kWarpSize; ++lane) {
        if (!(lanes >> lane & 1u)) {
            continue;
        }
        unsigned last = lane;
        while (last + 1 < kWarpSize && (lanes >> (last + 1) & 1u)) {
            ++last;
        }
        text += (text.empty() ? "" : ", ") + std::to_string(lane) + (last > lane ? "-" + std::to_string(last) : "");
        lane = last;
    }
    return text;
}

inline std::string hex(unsigned mask) {
    char text[11];
    std::snprintf(text, sizeof text, "0x%08x", mask);
    return text;
}

inline unsigned source_lane(const Fiber& f, unsigned lane) {
    const unsigned width = static_cast<unsigned>(f.width);
    const unsigned segment = lane & ~(width - 1);
    const long param = f.param;
    switch (f.op) {
        case WarpOp::shfl:
            return segment | (static_cast<unsigned>(param) & (width - 1));
        case WarpOp::shfl_up:
            return (lane - segment) < param ? lane : lane - static_cast<unsigned>(param);
        case WarpOp::shfl_down:
            return (lane - segment) + param >= width ? lane : lane + static_cast<unsigned>(param);
        case WarpOp::shfl_xor: {
            const unsigned source = lane ^ static_cast<unsigned>(param);
            return (source & ~(width - 1)) > segment || source >= kWarpSize ? lane : source;
        }
        default:
            return lane;
    }
}

// Every lane of `mask` in the warp at `base` has called a warp operation: check they agree,
// work out each lane's result, and let them all go on.
inline void complete_warp_op(Block& b, unsigned base, unsigned mask) {
    const Fiber& caller = b.fibers[b.current];
    for (unsigned lane = 0; lane < kWarpSize; ++lane) {
        const Fiber& f = b.fibers[base + lane];
        if ((mask >> lane & 1u) && (f.op != caller.op || f.mask != caller.mask)) {
            fail(kSync, "warp operations disagree in " + where(b) + ": thread " + thread_name(b, b.current) +
                            " calls " + warp_op_name(caller.op) + " with mask " + hex(caller.mask) +
                            ", thread " + thread_name(b, base + lane) + " " + warp_op_name(f.op) + " with mask " +
                            hex(f.mask));
        }
    }
    std::uint64_t ballot = 0;
    for (unsigned lane = 0; lane < kWarpSize; ++lane) {
        if (mask >> lane & 1u) {
            ballot |= static_cast<std::uint64_t>(b.fibers[base + lane].value != 0) << lane;
        }
    }
    const std::uint64_t moment = ++moments;
    for (unsigned lane = 0; lane < kWarpSize; ++lane) {
        if (!(mask >> lane & 1u)) {
            continue;
        }
        Fiber& f = b.fibers[base + lane];
        switch (f.op) {
            case WarpOp::sync:
                if (b.joint.empty()) {
                    b.joint.assign(static_cast<std::size_t>(b.count + kWarpSize) * kWarpSize, 0);
                }
                for (unsigned other = 0; other < kWarpSize; ++other) {
                    if (mask >> other & 1u) {
                        b.joint[(base + lane) * kWarpSize + other] = moment;
                    }
                }
                break;
            case WarpOp::ballot:
                f.warp_result = ballot;
                break;
            case WarpOp::any:
                f.warp_result = ballot != 0;
                break;
            case WarpOp::all:
                f.warp_result = ballot == mask;
                break;
            default: {
                const unsigned source = source_lane(f, lane);
                if (!(mask >> source & 1u)) {
                    fail(kSync, std::string(warp_op_name(f.op)) + " in " + where(b) + ": thread " +
                                    thread_name(b, base + lane) + " reads lane " + std::to_string(source) +
                                    ", which is not in the mask " + hex(mask));
                }
                f.warp_result = b.fibers[base + source].value;
            }
        }
        f.state = State::runnable;
    }
}

inline std::uint64_t warp_op(WarpOp op, unsigned mask, std::uint64_t value, int param, int width) {
    Block& b = *active;
    const unsigned self = b.current;
    const unsigned lane = self % kWarpSize;
    const unsigned base = self - lane;
    const unsigned lanes_here = b.count - base < kWarpSize ? b.count - base : kWarpSize;
    const unsigned present = lanes_here == kWarpSize ? ~0u : (1u << lanes_here) - 1;
    if (!(mask >> lane & 1u)) {
        fail(kSync, std::string(warp_op_name(op)) + " in " + where(b) + ": thread " + thread_name(b, self) +
                        " (lane " + std::to_string(lane) + ") calls it with mask " + hex(mask) +
                        ", which leaves its own lane out");
    }
    if (mask & ~present) {
        fail(kSync, std::string(warp_op_name(op)) + " in " + where(b) + ": the mask " + hex(mask) +
                        " names lanes " + lane_list(mask & ~present) + ", which this block of " +
                        std::to_string(b.count) + " threads does not have");
    }
    if (width < 1 || width > static_cast<int>(kWarpSize) || (width & (width - 1)) != 0) {
        fail(kSync, std::string(warp_op_name(op)) + " in " + where(b) + ": width " + std::to_string(width) +
                        " is not a power of 2 from 1 to 32");
    }
    Fiber& f = b.fibers[self];
    f.op = op;
    f.mask = mask;
    f.value = value;
    f.param = param;
    f.width = width;
    f.state = State::warp;
    bool complete = true;
    for (unsigned other = 0; other < kWarpSize && complete; ++other) {
        complete = !(mask >> other & 1u) || b.fibers[base + other].state == State::warp;
    }
    if (complete) {
        complete_warp_op(b, base, mask);
    } else {
        wait(State::warp);
    }
    return f.warp_result;
}

template <typename T>
std::uint64_t to_bits(T value) {
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "cuda-emu shuffles values of up to 8 bytes");
    std::uint64_t bits = 0;
    std::memcpy(&bits, &value, sizeof(T));
    return bits;
}

template <typename T>
T from_bits(std::uint64_t bits) {
    T value;
    std::memcpy(&value, &bits, sizeof(T));
    return value;
}

// -- the scheduler --------------------------------------------------------------------------------

inline void fiber_main() {
    Block& b = *active;
    b.invoke(b.call);
    b.fibers[b.current].state = State::done;
}  // returns to b.scheduler (uc_link)

// The first waiting lane whose warp operation cannot complete, described.
inline std::string stuck_warp(const Block& b) {
    for (unsigned t = 0; t < b.count; ++t) {
        const Fiber& f = b.fibers[t];
        if (f.state != State::warp) {
            continue;
        }
        const unsigned base = t - t % kWarpSize;
        unsigned missing = 0, returned = 0;
        for (unsigned lane = 0; lane < kWarpSize; ++lane) {
            if ((f.mask >> lane & 1u) && b.fibers[base + lane].state != State::warp) {
                missing |= 1u << lane;
                returned |= static_cast<unsigned>(b.fibers[base + lane].state == State::done) << lane;
            }
        }
        std::string message = std::string(warp_op_name(f.op)) + " in " + where(b) + ": thread " +
                              thread_name(b, t) + " waits for lanes " + lane_list(missing) + " of its mask " +
                              hex(f.mask);
        if (returned != 0) {
            message += "; lanes " + lane_list(returned) + " returned";
        }
        if ((missing & ~returned) != 0) {
            message += "; lanes " + lane_list(missing & ~returned) + " wait at a barrier";
        }
        return message;
    }
    return "";
}

struct Stacks {
    char* memory = nullptr;
    std::size_t bytes = 0;
    ~Stacks() {
        if (memory != nullptr) {
            munmap(memory, bytes);
        }
    }
};

// Stacks for `count` fibers, each above a guard page, kept for the OS thread's later launches.
inline char* fiber_stacks(unsigned count, std::size_t& stride) {
    static thread_local Stacks stacks;
    const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    stride = kFiberStack + page;
    const std::size_t bytes = stride * count;
    if (stacks.bytes < bytes) {
        if (stacks.memory != nullptr) {
            munmap(stacks.memory, stacks.bytes);
            stacks = Stacks{};
        }
        void* memory = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (memory == MAP_FAILED) {
            return nullptr;
        }
        stacks.memory = static_cast<char*>(memory);
        stacks.bytes = bytes;
        for (unsigned k = 0; k < count; ++k) {
            mprotect(stacks.memory + k * stride, page, PROT_NONE);
        }
    }
    return stacks.memory;
}

inline void run_block(Block& b, char* stacks, std::size_t stride) {
    const std::size_t page = stride - kFiberStack;
    for (unsigned t = 0; t < b.count; ++t) {
        Fiber& f = b.fibers[t];
        f.thread = {t % blockDim.x, t / blockDim.x % blockDim.y, t / (blockDim.x * blockDim.y)};
        f.state = State::runnable;
        getcontext(&f.context);
        f.context.uc_stack.ss_sp = stacks + t * stride + page;
        f.context.uc_stack.ss_size = kFiberStack;
        f.context.uc_link = &b.scheduler;
        makecontext(&f.context, fiber_main, 0);
    }
    b.interval_start = ++moments;
    for (;;) {
        bool ran = false;
        for (unsigned t = 0; t < b.count; ++t) {
            if (b.fibers[t].state != State::runnable) {
                continue;
            }
            b.current = t;
            threadIdx = b.fibers[t].thread;
            swapcontext(&b.scheduler, &b.fibers[t].context);
            if (b.stop) {
                return;
            }
            ran = true;
        }
        if (ran) {
            continue;
        }
        bool all_done = true, warp_waits = false;
        for (unsigned t = 0; t < b.count; ++t) {
            all_done = all_done && b.fibers[t].state == State::done;
            warp_waits = warp_waits || b.fibers[t].state == State::warp;
        }
        if (all_done) {
            return;
        }
        if (warp_waits) {
            b.fault = kSync;
            b.message = stuck_warp(b);
            b.stop = true;
            return;
        }
        release_barrier(b);
        if (b.stop) {
            return;
        }
    }
}

template <typename... Args>
int launch_cooperative(const char* name, void (*kernel)(Args...), const unsigned int* grid,
                       const unsigned int* block, void** args) {
    error_message().clear();
    const unsigned long count = static_cast<unsigned long>(block[0]) * block[1] * block[2];
    if (count > kMaxBlockThreads) {
        error_message() = std::string(name) + ": a block of " + std::to_string(count) +
                          " threads; a CUDA block holds at most 1024";
        return kOther;
    }
    struct Call {
        void (*kernel)(Args...);
        void** args;
    } call{kernel, args};
    std::vector<Fiber> fibers(count);
    Block b{};
    b.kernel = name;
    b.invoke = [](void* p) {
        const Call* c = static_cast<const Call*>(p);
        gpucnn_emu::call(c->kernel, c->args, std::index_sequence_for<Args...>{});
    };
    b.call = &call;
    b.fibers = fibers.data();
    b.count = static_cast<unsigned>(count);
    std::size_t stride = 0;
    char* stacks = fiber_stacks(b.count, stride);
    if (stacks == nullptr) {
        error_message() = std::string(name) + ": no memory for the stacks of " + std::to_string(count) + " threads";
        return kOther;
    }
    gridDim = {grid[0], grid[1], grid[2]};
    blockDim = {block[0], block[1], block[2]};
    Block* outer = active;
    active = &b;
    for (unsigned bz = 0; bz < grid[2] && b.fault == kNone; ++bz)
        for (unsigned by = 0; by < grid[1] && b.fault == kNone; ++by)
            for (unsigned bx = 0; bx < grid[0] && b.fault == kNone; ++bx) {
                blockIdx = {bx, by, bz};
                b.joint.clear();
                run_block(b, stacks, stride);
            }
    active = outer;
    if (b.fault == kRace && b.races > 1) {
        b.message += "; " + std::to_string(b.races - 1) + " more racing accesses in that block";
    }
    error_message() = b.message;
    return b.fault;
}

}  // namespace gpucnn_emu

#define __syncthreads() ::gpucnn_emu::syncthreads(::gpucnn_emu::Barrier::plain, 1, __FILE__, __LINE__)
#define __syncthreads_count(predicate) \
    ::gpucnn_emu::syncthreads(::gpucnn_emu::Barrier::count, (predicate), __FILE__, __LINE__)
#define __syncthreads_and(predicate) \
    ::gpucnn_emu::syncthreads(::gpucnn_emu::Barrier::all, (predicate), __FILE__, __LINE__)
#define __syncthreads_or(predicate) \
    ::gpucnn_emu::syncthreads(::gpucnn_emu::Barrier::any, (predicate), __FILE__, __LINE__)

inline void __syncwarp(unsigned mask = 0xffffffffu) {
    ::gpucnn_emu::warp_op(::gpucnn_emu::WarpOp::sync, mask, 0, 0, 32);
}

template <typename T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
    using namespace gpucnn_emu;
    return from_bits<T>(warp_op(WarpOp::shfl, mask, to_bits(var), src_lane, width));
}

template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    using namespace gpucnn_emu;
    return from_bits<T>(warp_op(WarpOp::shfl_up, mask, to_bits(var), static_cast<int>(delta), width));
}

template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    using namespace gpucnn_emu;
    return from_bits<T>(warp_op(WarpOp::shfl_down, mask, to_bits(var), static_cast<int>(delta), width));
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
    using namespace gpucnn_emu;
    return from_bits<T>(warp_op(WarpOp::shfl_xor, mask, to_bits(var), lane_mask, width));
}

inline unsigned __ballot_sync(unsigned mask, int predicate) {
    return static_cast<unsigned>(::gpucnn_emu::warp_op(::gpucnn_emu::WarpOp::ballot, mask, predicate != 0, 0, 32));
}

inline int __any_sync(unsigned mask, int predicate) {
    return static_cast<int>(::gpucnn_emu::warp_op(::gpucnn_emu::WarpOp::any, mask, predicate != 0, 0, 32));
}

inline int __all_sync(unsigned mask, int predicate) {
    return static_cast<int>(::gpucnn_emu::warp_op(::gpucnn_emu::WarpOp::all, mask, predicate != 0, 0, 32));
}

// Declarations kernels/emu.py could not rewrite (extern __shared__, qualifiers): refused.
#define __shared__                                                                                   \
    static_assert(false, "cuda-emu cannot emulate this __shared__ declaration: it emulates "      \
                         "`__shared__ T name[N]...;` with T an arithmetic type, not extern (dynamic) " \
                         "shared memory");

#endif  // GPUCNN_EMU_COOPERATIVE_H
