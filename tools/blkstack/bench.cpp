// `blkstack bench`: our library, real libblkio and fio's io_uring engine,
// side by side, same workloads, same benchmark loop; prints IOPS, MB/s and
// the ratios, and with --callgrind the user-space instructions per request.
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "library_bench.hpp"

namespace blkstack::cli {

namespace {

using bench::Measurement;
using bench::Target;
using bench::Workload;

struct BenchOptions {
  std::string ours;      // our libblkio.so.1
  std::string libblkio;  // real libblkio.so.1
  std::string tmpfs_dir = "/dev/shm";
  std::string disk_dir = "/var/tmp";
  uint64_t size = 1ull << 30;
  double runtime = 3;
  unsigned repeat = 3;
  bool fio = true;
  bool callgrind = false;
  uint64_t callgrind_requests = 100000;
  std::string json_out;
  std::vector<std::string> only;  // workload or target names to run
  uint32_t reap = 0;              // Workload::reap_max for every workload
};

std::string self_exe() { return std::filesystem::read_symlink("/proc/self/exe"); }

std::string default_ours() {
  auto dir = std::filesystem::path(self_exe()).parent_path();
  for (auto candidate : {dir / "../../src/libblkio.so.1", dir / "../lib/libblkio.so.1", dir / "libblkio.so.1"}) {
    if (std::filesystem::exists(candidate)) return std::filesystem::canonical(candidate);
  }
  return {};
}

std::string default_libblkio() {
  const char* p = "/var/cache/blkstack/libblkio/usr/lib/x86_64-linux-gnu/libblkio.so.1";
  return std::filesystem::exists(p) ? p : "";
}

// A file full of data (reads must not hit holes), created once per run.
bool make_data_file(const std::string& path, uint64_t size) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  std::vector<char> buf(1 << 20);
  uint64_t x = 88172645463325252ull;
  for (auto& c : buf) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    c = static_cast<char>(x);
  }
  for (uint64_t off = 0; off < size; off += buf.size()) {
    if (::pwrite(fd, buf.data(), buf.size(), static_cast<off_t>(off)) != static_cast<ssize_t>(buf.size())) {
      ::close(fd);
      return false;
    }
  }
  ::fsync(fd);
  ::close(fd);
  return true;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Row {
  std::string target, workload;
  uint32_t block_size;
  double ours = 0, real = 0, fio = 0;
  std::string note;
};

// Instructions per request in the library object: the difference between
// runs of N and 2N requests, divided by N, cancels all setup cost.
struct InstrResult {
  double lib = 0;    // self instructions inside libblkio.so per request
  double total = 0;  // all user-space instructions per request (loop included)
  std::string error;
};

InstrResult callgrind_instructions(const std::string& lib, const Target& t, const Workload& w, uint64_t n) {
  InstrResult r;
  auto run = [&](uint64_t count, std::vector<std::pair<std::string, uint64_t>>& out) -> bool {
    std::string file = fmt::format("/tmp/blkstack-callgrind-{}-{}.out", getpid(), count);
    std::string cmd = fmt::format("valgrind --tool=callgrind --callgrind-out-file={} '{}' bench-one --lib '{}' --driver {} "
                                  "--count {} --bs {} --depth {} --reap {} {} {}",
                                  file, self_exe(), lib, t.driver, count, w.block_size, w.depth, w.reap_max,
                                  w.write ? "--write" : "",
                                  w.random ? "" : "--sequential");
    for (auto& [k, v] : t.props) cmd += fmt::format(" --prop '{}={}'", k, v);
    cmd += " >/dev/null 2>&1";
    if (std::system(cmd.c_str()) != 0) {
      r.error = "valgrind run failed: " + cmd;
      return false;
    }
    out = bench::callgrind_cost_by_object(file);
    std::filesystem::remove(file);
    return true;
  };
  std::vector<std::pair<std::string, uint64_t>> a, b;
  if (!run(n, a) || !run(2 * n, b)) return r;
  auto lib_cost = [](const std::vector<std::pair<std::string, uint64_t>>& v) {
    uint64_t sum = 0;
    for (auto& [ob, c] : v) {
      if (ob.find("libblkio.so") != std::string::npos) sum += c;
    }
    return sum;
  };
  auto all_cost = [](const std::vector<std::pair<std::string, uint64_t>>& v) {
    uint64_t sum = 0;
    for (auto& [ob, c] : v) sum += c;
    return sum;
  };
  r.lib = static_cast<double>(lib_cost(b) - lib_cost(a)) / static_cast<double>(n);
  r.total = static_cast<double>(all_cost(b) - all_cost(a)) / static_cast<double>(n);
  return r;
}

bool selected(const BenchOptions& o, const std::string& target, const std::string& workload) {
  if (o.only.empty()) return true;
  for (auto& s : o.only) {
    if (s == target || s == workload || s == target + "/" + workload) return true;
  }
  return false;
}

int run_bench(BenchOptions o) {
  if (o.ours.empty()) o.ours = default_ours();
  if (o.libblkio.empty()) o.libblkio = default_libblkio();
  if (o.ours.empty()) {
    std::cerr << "blkstack bench: cannot find our libblkio.so.1; pass --ours\n";
    return 2;
  }
  bool have_real = !o.libblkio.empty();
  if (!have_real) std::cerr << "blkstack bench: real libblkio not found (pass --libblkio); measuring ours only\n";
  if (o.fio && std::system("command -v fio >/dev/null 2>&1") != 0) {
    std::cerr << "blkstack bench: fio not installed; skipping the fio reference\n";
    o.fio = false;
  }

  std::vector<Workload> workloads = {
      {"randread-4k-qd1", false, true, 4096, 1},
      {"randread-4k-qd32", false, true, 4096, 32},
      {"randwrite-4k-qd32", true, true, 4096, 32},
      {"seqread-1m-qd8", false, false, 1 << 20, 8},
  };
  for (Workload& w : workloads) w.reap_max = o.reap;
  std::string tmpfs_file = o.tmpfs_dir + "/blkstack-bench-" + std::to_string(getpid()) + ".img";
  std::string disk_file = o.disk_dir + "/blkstack-bench-" + std::to_string(getpid()) + ".img";
  std::vector<Target> targets = {
      {"tmpfs", "io_uring", {{"path", tmpfs_file}}, tmpfs_file, false},
      {"disk", "io_uring", {{"path", disk_file}, {"direct", "true"}}, disk_file, true},
      {"null", "null", {{"size", std::to_string(o.size)}}, "", false},
  };
  std::cerr << "preparing " << o.size / 1048576 << " MiB files on " << o.tmpfs_dir << " and " << o.disk_dir << "...\n";
  if (!make_data_file(tmpfs_file, o.size) || !make_data_file(disk_file, o.size)) {
    std::cerr << "blkstack bench: cannot create the benchmark files: " << strerror(errno) << "\n";
    return 1;
  }

  std::vector<Row> rows;
  int failures = 0;
  for (const Target& t : targets) {
    for (const Workload& w : workloads) {
      if (!selected(o, t.name, w.name)) continue;
      Row row{t.name, w.name, w.block_size};
      std::vector<double> ours, real, fio;
      // Interleave the contenders so drift on a noisy machine hits all alike,
      // and rotate who goes first: on a virtual disk the host's cache warms
      // up for whoever reads after the first.
      bool ours_failed = false;
      auto run_contender = [&](int who) {
        if (who == 0) {
          Measurement m = bench::run_library(o.ours, t, w, o.runtime);
          if (!m.ok) {
            row.note = "ours: " + m.error;
            ours_failed = true;
            return;
          }
          ours.push_back(m.iops());
        } else if (who == 1 && have_real && t.driver != "null") {
          Measurement r = bench::run_library(o.libblkio, t, w, o.runtime);
          if (r.ok) {
            real.push_back(r.iops());
          } else {
            row.note = "libblkio: " + r.error;
          }
        } else if (who == 2 && o.fio && !t.path.empty()) {
          Measurement f = bench::run_fio(t, w, o.runtime);
          if (f.ok) {
            fio.push_back(f.iops());
          } else {
            row.note = "fio: " + f.error;
          }
        }
      };
      for (unsigned rep = 0; rep < o.repeat && !ours_failed; rep++) {
        for (unsigned k = 0; k < 3 && !ours_failed; k++) run_contender(static_cast<int>((rep + k) % 3));
      }
      if (ours_failed) failures++;
      row.ours = median(ours);
      row.real = median(real);
      row.fio = median(fio);
      rows.push_back(row);
      std::cerr << fmt::format("  {:<6} {:<18} ours {:>10.0f}  libblkio {:>10.0f}  fio {:>10.0f} IOPS\n", t.name, w.name,
                               row.ours, row.real, row.fio);
    }
  }

  std::cout << (o.reap ? fmt::format("\nat most {} completions per blkioq_do_io (fio: iodepth_batch_complete_max={})", o.reap, o.reap)
                       : std::string("\ncompletions per blkioq_do_io: up to the queue depth"));
  std::cout << fmt::format("\n{:<6} {:<18} {:>12} {:>10} {:>12} {:>12} {:>9} {:>9}\n", "target", "workload",
                           "blkstack", "MB/s", "libblkio", "fio", "vs lib", "vs fio");
  for (const Row& r : rows) {
    auto ratio = [](double a, double b) { return b > 0 ? fmt::format("{:.3f}x", a / b) : std::string("-"); };
    std::cout << fmt::format("{:<6} {:<18} {:>12.0f} {:>10.1f} {:>12.0f} {:>12.0f} {:>9} {:>9}  {}\n", r.target,
                             r.workload, r.ours, r.ours * r.block_size / 1e6, r.real, r.fio, ratio(r.ours, r.real),
                             ratio(r.ours, r.fio), r.note);
  }

  nlohmann::json j;
  for (const Row& r : rows) {
    j["results"].push_back({{"target", r.target}, {"workload", r.workload}, {"blkstack_iops", r.ours},
                            {"libblkio_iops", r.real}, {"fio_iops", r.fio}, {"note", r.note}});
  }

  if (o.callgrind) {
    Workload w{"randread-4k-qd32", false, true, 4096, 32};
    std::cout << "\nuser-space instructions per request (callgrind, " << w.name << "):\n";
    for (auto [name, lib] : {std::pair{"blkstack", o.ours}, std::pair{"libblkio", o.libblkio}}) {
      if (lib.empty()) continue;
      for (const Target& t : targets) {
        if (t.name != "tmpfs" && t.name != "null") continue;
        if (t.name == "null" && std::string(name) == "libblkio") continue;
        InstrResult ir = callgrind_instructions(lib, t, w, o.callgrind_requests);
        if (!ir.error.empty()) {
          std::cout << "  " << name << " " << t.name << ": " << ir.error << "\n";
          failures++;
          continue;
        }
        std::cout << fmt::format("  {:<9} {:<6} inside library {:>7.1f}   whole process {:>7.1f}\n", name, t.name, ir.lib,
                                 ir.total);
        j["instructions"].push_back({{"library", name}, {"target", t.name}, {"in_library", ir.lib}, {"total", ir.total}});
      }
    }
  }
  if (!o.json_out.empty()) {
    std::ofstream(o.json_out) << j.dump(2) << "\n";
  }
  std::filesystem::remove(tmpfs_file);
  std::filesystem::remove(disk_file);
  return failures ? 1 : 0;
}

// `blkstack bench-one`: one run of one workload on any device: in-process
// for a number of requests (under callgrind), or for --seconds (the driver
// benchmarks under bench/ compare it with fio's engines).
struct OneOptions {
  std::string lib, driver;
  std::vector<std::string> props;
  double seconds = 0;
  uint64_t count = 100000;
  uint32_t bs = 4096, depth = 32, reap = 0;
  bool write = false, sequential = false;
};

int run_one(const OneOptions& o) {
  Target t{"one", o.driver, {}, "", false};
  for (auto& p : o.props) {
    auto eq = p.find('=');
    if (eq == std::string::npos) return 2;
    t.props.emplace_back(p.substr(0, eq), p.substr(eq + 1));
  }
  Workload w{"one", o.write, !o.sequential, o.bs, o.depth, o.reap};
  Measurement m = o.seconds > 0 ? bench::run_library(o.lib, t, w, o.seconds)
                                : bench::run_library(o.lib, t, w, 0, o.count, true);
  if (!m.ok) {
    std::cerr << m.error << "\n";
    return 1;
  }
  std::cout << m.ios << " requests in " << m.seconds << " s\n";
  std::cout << fmt::format("IOPS {:.0f}\n", m.iops());
  return 0;
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("bench", "Benchmark our library against libblkio and fio, side by side");
  static BenchOptions o;
  cmd->add_option("--ours", o.ours, "our libblkio.so.1 (default: next to this program)");
  cmd->add_option("--libblkio", o.libblkio, "real libblkio.so.1 to compare with");
  cmd->add_option("--tmpfs-dir", o.tmpfs_dir, "directory on tmpfs");
  cmd->add_option("--disk-dir", o.disk_dir, "directory on a disk file system");
  cmd->add_option("--size", o.size, "bytes per test file");
  cmd->add_option("--runtime", o.runtime, "seconds per measurement");
  cmd->add_option("--repeat", o.repeat, "measurements per contender (median is reported)");
  cmd->add_flag("!--no-fio", o.fio, "skip the fio reference");
  cmd->add_flag("--callgrind", o.callgrind, "also count instructions per request with callgrind");
  cmd->add_option("--callgrind-requests", o.callgrind_requests, "requests per callgrind run");
  cmd->add_option("--only", o.only, "run only these targets/workloads (e.g. tmpfs, randread-4k-qd32)");
  cmd->add_option("--json", o.json_out, "also write the results as JSON to this file");
  cmd->add_option("--reap", o.reap,
                  "at most this many completions per blkioq_do_io, for both libraries, and fio's "
                  "iodepth_batch_complete_max (default: the queue depth)");
  cmd->callback([] { std::exit(run_bench(o)); });

  auto* one = app.add_subcommand("bench-one", "One in-process benchmark run (used under callgrind)");
  one->group("");  // hidden
  static OneOptions oo;
  one->add_option("--lib", oo.lib)->required();
  one->add_option("--driver", oo.driver)->required();
  one->add_option("--prop", oo.props);
  one->add_option("--count", oo.count);
  one->add_option("--seconds", oo.seconds, "time-based run (a child process) instead of --count");
  one->add_option("--bs", oo.bs);
  one->add_option("--depth", oo.depth);
  one->add_option("--reap", oo.reap);
  one->add_flag("--write", oo.write);
  one->add_flag("--sequential", oo.sequential);
  one->callback([] { std::exit(run_one(oo)); });
}

}  // namespace blkstack::cli
