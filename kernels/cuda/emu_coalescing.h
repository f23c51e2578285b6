// Counting the global-memory traffic of emulated kernels: how many 32-byte sectors each warp
// request touches (kernels/emu.py, EmuLauncher(instrument=True), builds a source with
// GPUCNN_EMU_COALESCING defined and this header after emu_shim.h, and after emu_cooperative.h
// for a cooperative source).
//
// kernels/emu.py rewrites every pointer to an arithmetic type or a template type parameter
// in a source (`const T* __restrict__ x`, `T* p = ...`, a function's `T*` return type) into
// Global<T>: a pointer whose subscript records the element's address, its size and the
// source line and column of the subscript (the site), then returns a plain T&. A record
// cannot tell a load from a store through a T&, so a site of a pointer to const counts as a
// load and any other site as an access (a load, a store, or both: either touches the same
// sectors). Pointer arithmetic keeps a Global; a Global never turns back into a raw pointer,
// so an access through a path this header does not know is a compile error, never a miss.
//
// Requests. A GPU issues one request per warp for each execution of a load or store
// instruction, joining the lanes that execute it together. The emulation runs threads one
// at a time (or as fibers between barriers), so it joins by count: the k-th time lane L of
// warp w reaches site s, its access joins request (w, s, k). A lane that left a loop or took
// another branch is absent from the requests it skipped, as an inactive lane is on a GPU.
// Per request the distinct sectors of the bytes accessed are counted; the ideal is
// ceil(active lanes x element size / 32), the lanes' bytes packed contiguously. The counts
// are kept per site and per k, summed over the launch's blocks, and handed to Python as text
// by gpucnn_emu_coalescing_report().
#ifndef GPUCNN_EMU_COALESCING_H
#define GPUCNN_EMU_COALESCING_H

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#if !defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11 && __GNUC__ < 14
// GCC before 14 has no __builtin_COLUMN; its __builtin_source_location() needs this type,
// which <source_location> declares only from C++20 on (this code is built as C++17).
namespace std {
struct source_location {
    struct __impl {
        const char* _M_file_name;
        const char* _M_function_name;
        unsigned _M_line;
        unsigned _M_column;
    };
};
}  // namespace std
#define GPUCNN_EMU_SOURCE_LOCATION 1
#elif defined(__has_builtin)
#if __has_builtin(__builtin_COLUMN)
#define GPUCNN_EMU_BUILTIN_COLUMN 1
#endif
#endif

namespace gpucnn_emu {

constexpr unsigned kSectorBytes = 32;
constexpr unsigned kCoalescingWarp = 32;

struct Site {
    const char* file;
    unsigned line;
    unsigned column;  // where the compiler places the subscript (its [ or ], or an operator beside it); 0: unknown
};

// An index into a Global: the conversion from an integer takes the caller's source location
// through its default argument, so that `x[i]` knows where it is written.
struct Index {
    long long value;
    Site site;
#if defined(GPUCNN_EMU_SOURCE_LOCATION)
    Index(long long v, const void* where = __builtin_source_location()) : value(v) {
        const auto* location = static_cast<const std::source_location::__impl*>(where);
        site = {location->_M_file_name, location->_M_line, location->_M_column};
    }
#elif defined(GPUCNN_EMU_BUILTIN_COLUMN)
    Index(long long v, const char* file = __builtin_FILE(), unsigned line = __builtin_LINE(),
          unsigned column = __builtin_COLUMN())
        : value(v), site{file, line, column} {}
#else
    Index(long long v, const char* file = __builtin_FILE(), unsigned line = __builtin_LINE())
        : value(v), site{file, line, 0} {}
#endif
};

// One site's totals for the k-th visits of its lanes, over the launch.
struct SiteTotals {
    unsigned long long requests = 0, sectors = 0, ideal = 0, lanes = 0;
};

// One warp request being gathered: its lanes and the sectors they touched.
struct Request {
    std::uint32_t lanes = 0;
    std::vector<std::pair<std::uintptr_t, std::uintptr_t>> sectors;  // (origin, offset / 32)
};

struct Coalescing {
    // sites by (file, line, column, load, element bytes); their order is their id
    std::map<std::tuple<std::string, unsigned, unsigned, bool, unsigned>, unsigned> site_ids;
    std::vector<std::tuple<std::string, unsigned, unsigned, bool, unsigned>> sites;
    // the current block: visits per (thread, site), requests per (warp, site, k)
    long long block = -1;
    std::map<std::pair<unsigned, unsigned>, unsigned> visits;
    std::map<std::tuple<unsigned, unsigned, unsigned>, Request> requests;
    // the launch: totals per (site, k)
    std::map<std::pair<unsigned, unsigned>, SiteTotals> totals;
    std::string report;
};

inline Coalescing& coalescing() {
    static thread_local Coalescing state;
    return state;
}

// Close the current block's requests into the launch's totals.
inline void flush_requests(Coalescing& c) {
    for (auto& [key, request] : c.requests) {
        std::sort(request.sectors.begin(), request.sectors.end());
        const auto distinct = std::unique(request.sectors.begin(), request.sectors.end()) - request.sectors.begin();
        const unsigned lanes = static_cast<unsigned>(__builtin_popcount(request.lanes));
        const unsigned bytes = std::get<4>(c.sites[std::get<1>(key)]);
        SiteTotals& t = c.totals[{std::get<1>(key), std::get<2>(key)}];
        t.requests += 1;
        t.sectors += static_cast<unsigned long long>(distinct);
        t.ideal += (lanes * bytes + kSectorBytes - 1) / kSectorBytes;
        t.lanes += lanes;
    }
    c.requests.clear();
    c.visits.clear();
}

// Record one access of `bytes` bytes at `address`, in the allocation at `origin`, by the running
// thread at `site`.
inline void note_global(const void* origin, const void* address, unsigned bytes, bool load, const Site& site) {
    Coalescing& c = coalescing();
    const long long block =
        static_cast<long long>(blockIdx.x) +
        static_cast<long long>(gridDim.x) * (blockIdx.y + static_cast<long long>(gridDim.y) * blockIdx.z);
    if (block != c.block) {
        flush_requests(c);
        c.block = block;
    }
    const unsigned thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const auto site_key = std::make_tuple(std::string(site.file), site.line, site.column, load, bytes);
    auto found = c.site_ids.find(site_key);
    if (found == c.site_ids.end()) {
        found = c.site_ids.emplace(site_key, static_cast<unsigned>(c.sites.size())).first;
        c.sites.push_back(site_key);
    }
    const unsigned id = found->second;
    const unsigned k = c.visits[{thread, id}]++;
    Request& request = c.requests[{thread / kCoalescingWarp, id, k}];
    request.lanes |= 1u << (thread % kCoalescingWarp);
    const auto base = reinterpret_cast<std::uintptr_t>(origin);
    const auto first = reinterpret_cast<std::uintptr_t>(address) - base;
    for (std::uintptr_t sector = first / kSectorBytes; sector <= (first + bytes - 1) / kSectorBytes; ++sector) {
        request.sectors.emplace_back(base, sector);
    }
}

// A pointer to global memory whose subscripts are recorded (see the top of this header).
// `origin` is the address the pointer was made from (a kernel argument, a cast), the start of
// an allocation: sectors are counted from it, as a GPU's allocations start on a 256-byte
// boundary, whatever the alignment of the emulation's arrays. Global<T> derives from
// Global<const T>, so that a template taking `Global<const T>` deduces T from a Global<T>,
// as one taking `const T*` does from a T*.
template <typename T> class Global;

template <typename T>
class Global<const T> {
  public:
    Global() = default;
    Global(const T* pointer) : pointer_(pointer), origin_(pointer) {}  // NOLINT: an argument or a cast
    Global(std::nullptr_t) {}                                            // NOLINT

    const T& operator[](Index index) const {
        note_global(origin_, pointer_ + index.value, sizeof(T), true, index.site);
        return pointer_[index.value];
    }
    Global operator+(long long n) const { return Global(pointer_ + n, origin_); }
    Global operator-(long long n) const { return Global(pointer_ - n, origin_); }
    friend Global operator+(long long n, const Global& g) { return g + n; }
    friend bool operator==(const Global& g, std::nullptr_t) { return g.pointer_ == nullptr; }
    friend bool operator!=(const Global& g, std::nullptr_t) { return g.pointer_ != nullptr; }

  protected:
    Global(const T* pointer, const void* origin) : pointer_(pointer), origin_(origin) {}
    const T* pointer_ = nullptr;
    const void* origin_ = nullptr;
};

template <typename T>
class Global : public Global<const T> {
  public:
    Global() = default;
    Global(T* pointer) : Global<const T>(pointer) {}  // NOLINT: an argument or a cast
    Global(std::nullptr_t) {}                          // NOLINT

    T& operator[](Index index) const {
        note_global(this->origin_, this->pointer_ + index.value, sizeof(T), false, index.site);
        return const_cast<T&>(this->pointer_[index.value]);
    }
    Global operator+(long long n) const { return Global(*this, n); }
    Global operator-(long long n) const { return Global(*this, -n); }
    friend Global operator+(long long n, const Global& g) { return g + n; }

  private:
    Global(const Global& g, long long n) : Global<const T>(g.pointer_ + n, g.origin_) {}
};

// A Global kernel parameter is passed, checked and sized as the pointer it replaces.
template <typename T> struct type_code<Global<T>> : type_code<T*> {};
template <typename T> struct kernel_argument<Global<T>> {
    static constexpr unsigned bytes = sizeof(T*);
    static Global<T> read(void* value) { return Global<T>(*static_cast<T**>(value)); }
};

}  // namespace gpucnn_emu

// Forget the counts of earlier launches on this OS thread.
extern "C" void gpucnn_emu_coalescing_begin() {
    gpucnn_emu::Coalescing& c = gpucnn_emu::coalescing();
    c.requests.clear();
    c.visits.clear();
    c.totals.clear();
    c.block = -1;
}

// The counts since gpucnn_emu_coalescing_begin(), one line per site and k, tab-separated:
// file, line, column, load (1) or access (0), element bytes, k, requests, sectors, ideal, lanes.
extern "C" const char* gpucnn_emu_coalescing_report() {
    gpucnn_emu::Coalescing& c = gpucnn_emu::coalescing();
    gpucnn_emu::flush_requests(c);
    c.block = -1;
    c.report.clear();
    char line[160];
    for (const auto& [key, t] : c.totals) {
        const auto& [file, number, column, load, bytes] = c.sites[key.first];
        std::snprintf(line, sizeof line, "\t%u\t%u\t%d\t%u\t%u\t%llu\t%llu\t%llu\t%llu\n", number, column,
                      load ? 1 : 0, bytes, key.second, t.requests, t.sectors, t.ideal, t.lanes);
        c.report += file + line;
    }
    c.totals.clear();
    return c.report.c_str();
}

#endif  // GPUCNN_EMU_COALESCING_H
