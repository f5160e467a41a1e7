// Reactor: one thread, one io_uring ring. Sockets, timers, eventfds and the
// completion fds of library queues are all submissions on this ring; each
// connection, ublk queue or virtqueue lives on exactly one reactor, so the
// data path takes no locks (Seastar/SPDK style shared-nothing).
#pragma once

#include <atomic>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "blkstack/status.hpp"
#include "core/fd.hpp"
#include "core/uring.hpp"

namespace blkstack {

class Reactor {
 public:
  // Something waiting for a completion on this reactor's ring: its address is
  // the SQE's user_data. It must outlive its in-flight operations.
  class Op {
   public:
    virtual void complete(int res, uint32_t cqe_flags) = 0;

   protected:
    ~Op() = default;
  };

  // Work to run once at the end of the current loop iteration, after every
  // completion of the iteration has been handled (e.g. submitting the
  // library requests queued meanwhile in one call, or flushing replies).
  class Deferred {
   public:
    virtual void run_deferred() = 0;

   protected:
    ~Deferred() = default;

   private:
    friend class Reactor;
    bool queued_ = false;
  };

  explicit Reactor(unsigned index) : index_(index) {}
  ~Reactor();
  Reactor(const Reactor&) = delete;
  Reactor& operator=(const Reactor&) = delete;

  Status init(unsigned entries = 1024);
  void start();                       // runs loop() on a new thread
  void stop();                        // asks the loop to end (any thread)
  void join();
  unsigned index() const { return index_; }
  bool on_reactor_thread() const { return std::this_thread::get_id() == thread_id_; }

  // ---- reactor thread only ----
  io_uring_sqe* sqe();  // never null: submits when the SQ is full
  void defer(Deferred& d) {
    if (!d.queued_) {
      d.queued_ = true;
      deferred_.push_back(&d);
    }
  }

  // ---- any thread ----
  // Runs fn on the reactor thread, soon.
  void post(std::function<void()> fn);

 private:
  class Mailbox final : public Op {
   public:
    explicit Mailbox(Reactor& r) : r_(r) {}
    void complete(int res, uint32_t flags) override;
    void arm();

   private:
    Reactor& r_;
    uint64_t value_ = 0;
  };

  void loop();
  void run_mailbox();
  void run_deferred();

  unsigned index_;
  Ring ring_;
  std::thread thread_;
  std::thread::id thread_id_;
  std::atomic<bool> stop_{false};
  UniqueFd wake_fd_;
  Mailbox mailbox_op_{*this};
  std::mutex mailbox_mutex_;
  std::vector<std::function<void()>> mailbox_;
  std::vector<Deferred*> deferred_;
};

}  // namespace blkstack
