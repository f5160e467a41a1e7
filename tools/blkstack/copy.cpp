// `blkstack copy SRC DST`: device to device, pipelined, sparse-aware, with a
// progress bar. Data moves through one memory region mapped on both devices,
// so nothing is copied in user space.
#include <poll.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <iostream>
#include <vector>

#include "blkstack/device_spec.hpp"
#include "blkstack/queue.hpp"
#include "commands.hpp"
#include "progress.hpp"

namespace blkstack::cli {

namespace {

struct CopyOptions {
  std::string src, dst;
  unsigned depth = 8;
  uint64_t chunk = 1 << 20;
  bool sparse = true;
  bool progress_on = false;   // --progress
  bool progress_off = false;  // --no-progress (default: when stderr is a terminal)
};

enum class SlotState { kFree, kReading, kWriting, kZeroing };

struct Slot {
  SlotState state = SlotState::kFree;
  uint64_t offset = 0;
  uint64_t len = 0;
  char* buf = nullptr;
};

uint64_t gcd_lcm(uint64_t a, uint64_t b) { return std::lcm(a, b); }

int fail(const std::string& msg) {
  std::cerr << "blkstack copy: " << msg << "\n";
  return 1;
}

// Waits until either queue has something to report.
void wait_for_events(Queue& a, Queue& b) {
  struct pollfd fds[2] = {{a.completion_fd(), POLLIN, 0}, {b.completion_fd(), POLLIN, 0}};
  ::poll(fds, 2, 1000);
  uint64_t v;
  for (auto& f : fds) {
    if (f.revents & POLLIN) (void)!::read(f.fd, &v, sizeof(v));
  }
}

int run_copy(const CopyOptions& o) {
  auto src_spec = parse_key_values(o.src);
  if (!src_spec) return fail(src_spec.status().message());
  auto dst_spec = parse_key_values(o.dst);
  if (!dst_spec) return fail(dst_spec.status().message());
  auto src = open_device(*src_spec, {.read_only = true});
  if (!src) return fail("source: " + src.status().message());
  auto dst = open_device(*dst_spec);
  if (!dst) return fail("destination: " + dst.status().message());
  Device& s = **src;
  Device& d = **dst;
  const uint64_t size = s.info().capacity;
  if (d.info().capacity < size) {
    return fail(fmt::format("destination ({} bytes) is smaller than the source ({} bytes)", d.info().capacity, size));
  }

  // A chunk every request rule of both devices accepts.
  uint64_t align = gcd_lcm(static_cast<uint64_t>(s.info().request_alignment), static_cast<uint64_t>(d.info().request_alignment));
  uint64_t chunk = std::max<uint64_t>(o.chunk / align * align, align);
  for (const Device* dev : {&s, &d}) {
    if (dev->info().max_transfer > 0) chunk = std::min<uint64_t>(chunk, static_cast<uint64_t>(dev->info().max_transfer) / align * align);
  }
  if (size % align != 0) return fail(fmt::format("source size is not a multiple of the alignment ({})", align));

  MemRegion region{};
  uint64_t region_align = std::max(s.info().mem_region_alignment, d.info().mem_region_alignment);
  uint64_t region_len = (chunk * o.depth + region_align - 1) / region_align * region_align;
  if (Status st = s.alloc_mem_region(region, region_len); !st) return fail("memory: " + st.message());
  if (Status st = s.map_mem_region(region); !st) return fail("memory: " + st.message());
  if (Status st = d.map_mem_region(region); !st) return fail("memory: " + st.message());

  Queue& sq = *s.queue(0);
  Queue& dq = *d.queue(0);
  sq.set_completion_fd_enabled(true);
  dq.set_completion_fd_enabled(true);
  std::vector<Slot> slots(o.depth);
  for (unsigned i = 0; i < o.depth; i++) slots[i].buf = static_cast<char*>(region.addr) + i * chunk;

  ProgressBar bar(size, o.progress_on || (!o.progress_off && ::isatty(2)));
  uint64_t next = 0, copied = 0;
  unsigned busy = 0;
  std::vector<Completion> comps(o.depth);
  bool zero_fast = s.info().can_report_holes && o.sparse;
  while (next < size || busy > 0) {
    // Start work on every free slot.
    for (unsigned i = 0; i < o.depth && next < size; i++) {
      Slot& sl = slots[i];
      if (sl.state != SlotState::kFree) continue;
      sl.offset = next;
      sl.len = std::min(chunk, size - next);
      if (zero_fast) {
        auto ext = s.extent_at(next, sl.len);
        if (ext && ext->len >= align) {
          sl.len = ext->len / align * align;
          if (ext->hole) {
            sl.state = SlotState::kZeroing;
            dq.write_zeroes(sl.offset, sl.len, reinterpret_cast<void*>(uintptr_t(i)), 0);
            next += sl.len;
            busy++;
            continue;
          }
        }
      }
      sl.state = SlotState::kReading;
      sq.read(sl.offset, sl.buf, sl.len, reinterpret_cast<void*>(uintptr_t(i)), 0);
      next += sl.len;
      busy++;
    }
    int n_src = sq.do_io(comps.data(), 0, static_cast<int>(comps.size()), nullptr);
    if (n_src < 0) return fail(fmt::format("source: {}", sq.error_message()));
    for (int k = 0; k < n_src; k++) {
      Slot& sl = slots[reinterpret_cast<uintptr_t>(comps[k].user_data)];
      if (comps[k].ret < 0) return fail(fmt::format("read at {}: {}", sl.offset, strerror(-comps[k].ret)));
      sl.state = SlotState::kWriting;
      dq.write(sl.offset, sl.buf, sl.len, comps[k].user_data, 0);
    }
    int n_dst = dq.do_io(comps.data(), 0, static_cast<int>(comps.size()), nullptr);
    if (n_dst < 0) return fail(fmt::format("destination: {}", dq.error_message()));
    for (int k = 0; k < n_dst; k++) {
      Slot& sl = slots[reinterpret_cast<uintptr_t>(comps[k].user_data)];
      if (comps[k].ret < 0) {
        return fail(fmt::format("{} at {}: {}", sl.state == SlotState::kZeroing ? "zeroing" : "write", sl.offset,
                                strerror(-comps[k].ret)));
      }
      sl.state = SlotState::kFree;
      copied += sl.len;
      busy--;
    }
    bar.update(copied);
    if (n_src == 0 && n_dst == 0 && busy > 0) wait_for_events(sq, dq);
  }
  dq.flush(nullptr, 0);
  Completion c;
  if (dq.do_io(&c, 1, 1, nullptr) != 1 || c.ret < 0) return fail("flush failed");
  bar.finish(copied);
  return 0;
}

}  // namespace

void add_copy_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("copy", "Copy one device to another (sparse-aware, with progress)");
  static CopyOptions o;
  cmd->add_option("source", o.src, "DRIVER[,property=value...] to read")->required();
  cmd->add_option("destination", o.dst, "DRIVER[,property=value...] to write")->required();
  cmd->add_option("--depth", o.depth, "requests in flight")->check(CLI::Range(1u, 1024u));
  cmd->add_option("--chunk", o.chunk, "bytes per request")->check(CLI::Range(uint64_t{512}, uint64_t{1} << 30));
  cmd->add_flag("!--no-sparse", o.sparse, "write every byte, even where the source has holes");
  cmd->add_flag("--progress", o.progress_on, "always show a progress bar (default: when stderr is a terminal)");
  cmd->add_flag("--no-progress", o.progress_off, "never show a progress bar");
  cmd->callback([] { std::exit(run_copy(o)); });
}

}  // namespace blkstack::cli
