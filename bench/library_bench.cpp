#include "library_bench.hpp"

#include <blkio.h>
#include <dlfcn.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

namespace blkstack::bench {

namespace {

// The libblkio entry points the loop uses, resolved from one library.
struct Api {
  void* handle = nullptr;
  decltype(&blkio_create) create;
  decltype(&blkio_connect) connect;
  decltype(&blkio_start) start;
  decltype(&blkio_destroy) destroy;
  decltype(&blkio_set_str) set_str;
  decltype(&blkio_set_int) set_int;
  decltype(&blkio_set_bool) set_bool;
  decltype(&blkio_get_uint64) get_uint64;
  decltype(&blkio_get_error_msg) error_msg;
  decltype(&blkio_alloc_mem_region) alloc_mem_region;
  decltype(&blkio_map_mem_region) map_mem_region;
  decltype(&blkio_get_queue) get_queue;
  decltype(&blkioq_read) read;
  decltype(&blkioq_write) write;
  decltype(&blkioq_do_io) do_io;

  std::string load(const std::string& path) {
    handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!handle) return dlerror();
#define SYM(field, name)                                                     \
  field = reinterpret_cast<decltype(field)>(dlsym(handle, #name));            \
  if (!field) return std::string("missing symbol ") + #name;
    SYM(create, blkio_create)
    SYM(connect, blkio_connect)
    SYM(start, blkio_start)
    SYM(destroy, blkio_destroy)
    SYM(set_str, blkio_set_str)
    SYM(set_int, blkio_set_int)
    SYM(set_bool, blkio_set_bool)
    SYM(get_uint64, blkio_get_uint64)
    SYM(error_msg, blkio_get_error_msg)
    SYM(alloc_mem_region, blkio_alloc_mem_region)
    SYM(map_mem_region, blkio_map_mem_region)
    SYM(get_queue, blkio_get_queue)
    SYM(read, blkioq_read)
    SYM(write, blkioq_write)
    SYM(do_io, blkioq_do_io)
#undef SYM
    return {};
  }
};

double now_s() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

// xorshift64*: cheap, and identical for every library.
struct Rng {
  uint64_t s = 0x9E3779B97F4A7C15ull;
  uint64_t next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 2685821657736338717ull;
  }
};

Measurement run_here(const std::string& library, const Target& t, const Workload& w, double seconds, uint64_t count) {
  Measurement m;
  Api api;
  if (std::string e = api.load(library); !e.empty()) {
    m.error = e;
    return m;
  }
  blkio* b = nullptr;
  auto fail = [&](const char* what) {
    m.error = std::string(what) + ": " + api.error_msg();
    if (b) api.destroy(&b);
    return m;
  };
  if (api.create(t.driver.c_str(), &b) < 0) return fail("blkio_create");
  for (auto& [k, v] : t.props) {
    if (api.set_str(b, k.c_str(), v.c_str()) < 0) return fail(("set " + k).c_str());
  }
  if (!w.write && api.set_bool(b, "read-only", true) < 0) return fail("set read-only");
  if (api.connect(b) < 0) return fail("blkio_connect");
  uint64_t capacity = 0;
  if (api.get_uint64(b, "capacity", &capacity) < 0) return fail("capacity");
  if (api.set_int(b, "num-queues", 1) < 0) return fail("num-queues");
  if (api.start(b) < 0) return fail("blkio_start");
  blkio_mem_region region{};
  if (api.alloc_mem_region(b, &region, static_cast<size_t>(w.depth) * w.block_size) < 0) return fail("alloc_mem_region");
  if (api.map_mem_region(b, &region) < 0) return fail("map_mem_region");
  // Writes carry incompressible, non-zero data, as fio's do: some servers
  // (and some devices) treat all-zero blocks specially.
  {
    Rng fill;
    auto* words = static_cast<uint64_t*>(region.addr);
    for (size_t i = 0; i < region.len / sizeof(uint64_t); i++) words[i] = fill.next();
  }
  blkioq* q = api.get_queue(b, 0);

  const uint64_t blocks = capacity / w.block_size;
  if (blocks == 0) return fail("device smaller than one block");
  Rng rng;
  uint64_t seq = 0;
  auto next_offset = [&]() -> uint64_t {
    uint64_t blk = w.random ? rng.next() % blocks : (seq++ % blocks);
    return blk * w.block_size;
  };
  auto issue = [&](uintptr_t slot) {
    char* buf = static_cast<char*>(region.addr) + slot * w.block_size;
    if (w.write) {
      api.write(q, next_offset(), buf, w.block_size, reinterpret_cast<void*>(slot), 0);
    } else {
      api.read(q, next_offset(), buf, w.block_size, reinterpret_cast<void*>(slot), 0);
    }
  };

  std::vector<blkio_completion> comps(w.depth);
  const uint32_t reap_max = w.reap_max ? std::min(w.reap_max, w.depth) : w.depth;
  uint64_t issued = 0, done = 0;
  double start = now_s(), deadline = start + seconds;
  for (uint32_t i = 0; i < w.depth && (count == 0 || issued < count); i++, issued++) issue(i);
  bool stopping = false;
  unsigned check = 0;
  while (done < issued) {
    int n = api.do_io(q, comps.data(), 1, static_cast<int>(reap_max), nullptr);
    if (n < 0) return fail("blkioq_do_io");
    for (int i = 0; i < n; i++) {
      if (comps[i].ret != 0) {
        m.error = "request failed: " + std::string(strerror(-comps[i].ret));
        api.destroy(&b);
        return m;
      }
      done++;
      if (!stopping && (count == 0 || issued < count)) {
        issue(reinterpret_cast<uintptr_t>(comps[i].user_data));
        issued++;
      }
    }
    if (count == 0 && ++check % 16 == 0 && now_s() >= deadline) stopping = true;
  }
  m.seconds = now_s() - start;
  m.ios = done;
  m.ok = true;
  api.destroy(&b);
  return m;
}

}  // namespace

Measurement run_library(const std::string& library, const Target& t, const Workload& w, double seconds,
                        uint64_t count, bool in_process) {
  if (in_process) return run_here(library, t, w, seconds, count);
  // A child per run: each library gets a fresh process, and a crash in one
  // is a failed measurement, not a dead benchmark.
  int fds[2];
  if (pipe(fds) != 0) return Measurement{false, "pipe"};
  pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    Measurement m = run_here(library, t, w, seconds, count);
    std::string line = fmt::format("{} {} {:.9f} {}\n", m.ok ? 1 : 0, m.ios, m.seconds, m.error);
    (void)!::write(fds[1], line.data(), line.size());
    _exit(0);
  }
  close(fds[1]);
  std::string out;
  char buf[512];
  ssize_t n;
  while ((n = ::read(fds[0], buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  Measurement m;
  std::istringstream in(out);
  int ok = 0;
  if (!(in >> ok >> m.ios >> m.seconds)) {
    m.error = "benchmark child died (status " + std::to_string(status) + ")";
    return m;
  }
  m.ok = ok == 1;
  std::getline(in >> std::ws, m.error);
  return m;
}

Measurement run_fio(const Target& t, const Workload& w, double seconds) {
  Measurement m;
  if (t.path.empty()) {
    m.error = "fio needs a file";
    return m;
  }
  std::string rw = w.random ? (w.write ? "randwrite" : "randread") : (w.write ? "write" : "read");
  std::string cmd = fmt::format(
      "fio --name=ref --filename='{}' --ioengine=io_uring --fixedbufs=1 --registerfiles=1 --rw={} --bs={} "
      "--iodepth={} --iodepth_batch_submit={} --iodepth_batch_complete_min=1 --iodepth_batch_complete_max={} "
      "--direct={} --time_based --runtime={} --ramp_time=0 --norandommap --randrepeat=0 --thread "
      "--output-format=json 2>/dev/null",
      t.path, rw, w.block_size, w.depth, w.depth, w.reap_max ? std::min(w.reap_max, w.depth) : w.depth,
      t.direct ? 1 : 0, std::max(1, static_cast<int>(seconds + 0.5)));
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) {
    m.error = "popen fio";
    return m;
  }
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  int status = pclose(p);
  try {
    auto j = nlohmann::json::parse(out.substr(out.find('{')));
    auto& job = j["jobs"][0][w.write ? "write" : "read"];
    m.ios = job["total_ios"].get<uint64_t>();
    m.seconds = job["runtime"].get<double>() / 1000.0;
    m.ok = m.ios > 0;
    if (!m.ok) m.error = "fio did no I/O";
  } catch (const std::exception& e) {
    m.error = fmt::format("fio failed (status {}): {}", status, e.what());
  }
  return m;
}

std::vector<std::pair<std::string, uint64_t>> callgrind_cost_by_object(const std::string& file) {
  // Callgrind's format: "ob=", "fn=" set the current object and function
  // (names may be compressed to "(id)"); cost lines start with a position;
  // the cost line right after "calls=" is a callee's inclusive cost and is
  // not self cost.
  std::ifstream in(file);
  std::map<std::string, std::string> ob_names;
  std::map<std::string, uint64_t> cost;
  std::string line, ob, cob;
  bool skip_next = false;
  auto resolve = [&](const std::string& spec) {
    if (spec.size() > 1 && spec[0] == '(') {
      size_t close = spec.find(')');
      std::string id = spec.substr(0, close + 1);
      if (close + 1 < spec.size()) ob_names[id] = spec.substr(close + 2);
      return ob_names[id];
    }
    return spec;
  };
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    if (line.rfind("ob=", 0) == 0) {
      ob = resolve(line.substr(3));
    } else if (line.rfind("cob=", 0) == 0) {
      resolve(line.substr(4));
    } else if (line.rfind("calls=", 0) == 0) {
      skip_next = true;
    } else if (std::isdigit(static_cast<unsigned char>(line[0])) || line[0] == '+' || line[0] == '-' ||
               line[0] == '*') {
      if (skip_next) {
        skip_next = false;
        continue;
      }
      std::istringstream ls(line);
      std::string pos;
      uint64_t ir = 0;
      if (ls >> pos >> ir) cost[ob] += ir;
    }
  }
  return {cost.begin(), cost.end()};
}

}  // namespace blkstack::bench
