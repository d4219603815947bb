// SegmentIo: the file I/O the nvme tier does on its segment files (STYLE.md "Hardware behind
// interfaces"): asynchronous positional reads and writes on O_DIRECT descriptors, space
// allocation, hole punching and fdatasync.
//
// The real implementation (NewUringSegmentIo) runs reads and writes through one io_uring
// with many requests in flight, and a completion thread that calls each request's callback.
// SegmentIoWrapper forwards every call; FaultInjectingSegmentIo (tests) fails chosen
// operations the way a full or failing disk would.
//
// Thread-safety: every method is safe for concurrent use. Ownership: the caller owns the
// descriptors and the buffers a request names; buffers must stay valid and untouched until
// the request's callback has run.
#pragma once

#include <sys/uio.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kv {

// One vectored read or write of `fd` at `offset` (which, like every iovec's address and
// length, must meet the descriptor's O_DIRECT alignment).
struct IoRequest {
  enum class Op : uint8_t { kRead, kWrite };
  Op op = Op::kRead;
  int fd = -1;
  uint64_t offset = 0;
  std::array<iovec, 3> iov{};
  int iovcnt = 0;
  uint64_t bytes() const {
    uint64_t n = 0;
    for (int i = 0; i < iovcnt; ++i) n += iov[i].iov_len;
    return n;
  }
};

// Called exactly once per request with the bytes transferred (which may be short) or
// -errno. It runs on the I/O completion thread, or inside Submit() when the request could
// not be queued; so it must not block and must not take a lock the submitter holds.
using IoCallback = std::function<void(int64_t result)>;

class SegmentIo {
 public:
  virtual ~SegmentIo() = default;
  // Starts `req`. Blocks while the queue is full. See IoCallback.
  virtual void Submit(const IoRequest& req, IoCallback done) = 0;
  // Reserves [offset, offset+len) of `fd` on disk (fallocate mode 0, extends the size).
  // ResourceExhausted when the disk is full; other errors as ErrnoToStatus.
  virtual absl::Status Allocate(int fd, uint64_t offset, uint64_t len) = 0;
  // Frees the blocks of [offset, offset+len) (fallocate PUNCH_HOLE | KEEP_SIZE); they read
  // back as zeros. Unimplemented when the filesystem cannot punch holes.
  virtual absl::Status PunchHole(int fd, uint64_t offset, uint64_t len) = 0;
  // fdatasync(fd): every write that completed before the call is durable when it returns OK.
  virtual absl::Status SyncData(int fd) = 0;
};

// An io_uring with `depth` entries (requests beyond that wait in Submit) and a completion
// thread. Unavailable naming the reason when io_uring cannot be set up (old kernel, seccomp,
// io_uring_disabled).
absl::StatusOr<std::unique_ptr<SegmentIo>> NewUringSegmentIo(int depth);

// Submits every request of `reqs` (up to `max_in_flight` at once) and calls `on_done(i,
// result)` for each on the calling thread as it completes, in completion order. Returns
// when all have completed.
void RunIoBatch(SegmentIo* io, std::span<const IoRequest> reqs, int max_in_flight,
                const std::function<void(size_t, int64_t)>& on_done);

// Forwards every call to `base` (not owned; must outlive the wrapper).
class SegmentIoWrapper : public SegmentIo {
 public:
  explicit SegmentIoWrapper(SegmentIo* base) : base_(base) {}
  void Submit(const IoRequest& req, IoCallback done) override {
    base_->Submit(req, std::move(done));
  }
  absl::Status Allocate(int fd, uint64_t offset, uint64_t len) override {
    return base_->Allocate(fd, offset, len);
  }
  absl::Status PunchHole(int fd, uint64_t offset, uint64_t len) override {
    return base_->PunchHole(fd, offset, len);
  }
  absl::Status SyncData(int fd) override { return base_->SyncData(fd); }

 protected:
  SegmentIo* base() const { return base_; }

 private:
  SegmentIo* base_;
};

// Breaks chosen operations of the wrapped SegmentIo. Every knob is an atomic, so a test may
// change them while other threads use it.
class FaultInjectingSegmentIo : public SegmentIoWrapper {
 public:
  using SegmentIoWrapper::SegmentIoWrapper;
  // While nonzero, Allocate() fails with this errno (ENOSPC: a full disk).
  void FailAllocations(int err) { alloc_errno_ = err; }
  // While nonzero, writes complete with -errno and write nothing.
  void FailWrites(int err) { write_errno_ = err; }
  // While set, every completed read has one byte of its first iovec flipped.
  void FlipReads(bool on) { flip_reads_ = on; }
  // While nonzero, SyncData() fails with this errno.
  void FailSyncs(int err) { sync_errno_ = err; }
  uint64_t syncs() const { return syncs_; }

  void Submit(const IoRequest& req, IoCallback done) override;
  absl::Status Allocate(int fd, uint64_t offset, uint64_t len) override;
  absl::Status SyncData(int fd) override;

 private:
  std::atomic<int> alloc_errno_{0}, write_errno_{0}, sync_errno_{0};
  std::atomic<bool> flip_reads_{false};
  std::atomic<uint64_t> syncs_{0};
};

}  // namespace kv
