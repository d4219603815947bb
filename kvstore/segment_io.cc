#include "kvstore/segment_io.h"

#include <fcntl.h>
#include <liburing.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <thread>
#include <utility>

#include "core/logging.h"
#include "core/mutex.h"
#include "core/status_macros.h"
#include "core/strings.h"

namespace kv {
namespace {

class UringSegmentIo : public SegmentIo {
 public:
  explicit UringSegmentIo(int depth) : depth_(depth) {}
  ~UringSegmentIo() override;
  absl::Status Start();

  void Submit(const IoRequest& req, IoCallback done) override;
  absl::Status Allocate(int fd, uint64_t offset, uint64_t len) override;
  absl::Status PunchHole(int fd, uint64_t offset, uint64_t len) override;
  absl::Status SyncData(int fd) override;

 private:
  // One submitted request. It owns a copy of the iovecs, so they outlive the submission
  // however the kernel handles the request.
  struct Pending {
    std::array<iovec, 3> iov;
    IoCallback done;
  };
  void Reap();

  const int depth_;
  io_uring ring_{};
  bool ring_ready_ = false;
  Mutex mu_;  // guards the submission queue; taken by the reaper to publish completions
  CondVar room_;
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread reaper_;
};

absl::Status UringSegmentIo::Start() {
  int r = io_uring_queue_init(static_cast<unsigned>(depth_), &ring_, 0);
  if (r < 0) {
    return MarkRetryable(absl::UnavailableError(
        StrCat("io_uring setup failed: ", std::strerror(-r),
               " (the nvme tier needs io_uring; check /proc/sys/kernel/io_uring_disabled)")));
  }
  ring_ready_ = true;
  reaper_ = std::thread([this] { Reap(); });
  return absl::OkStatus();
}

UringSegmentIo::~UringSegmentIo() {
  if (!ring_ready_) return;
  {
    MutexLock l(&mu_);
    while (in_flight_ > 0) room_.Wait(&mu_);
    // A NOP without data tells the reaper to stop; the queue is empty, so there is room.
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data(sqe, nullptr);
    io_uring_submit(&ring_);
  }
  reaper_.join();
  io_uring_queue_exit(&ring_);
}

void UringSegmentIo::Submit(const IoRequest& req, IoCallback done) {
  auto* p = new Pending{req.iov, std::move(done)};
  int err = 0;
  {
    MutexLock l(&mu_);
    while (in_flight_ >= depth_) room_.Wait(&mu_);
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) {
      err = EBUSY;
    } else {
      auto n = static_cast<unsigned>(req.iovcnt);
      if (req.op == IoRequest::Op::kRead) {
        io_uring_prep_readv(sqe, req.fd, p->iov.data(), n, req.offset);
      } else {
        io_uring_prep_writev(sqe, req.fd, p->iov.data(), n, req.offset);
      }
      io_uring_sqe_set_data(sqe, p);
      int r = io_uring_submit(&ring_);
      if (r < 0) {
        err = -r;
      } else {
        ++in_flight_;
      }
    }
  }
  if (err != 0) {
    p->done(-err);
    delete p;
  }
}

void UringSegmentIo::Reap() {
  for (;;) {
    io_uring_cqe* cqe = nullptr;
    int r = io_uring_wait_cqe(&ring_, &cqe);
    if (r == -EINTR) continue;
    if (r < 0) {
      // Cannot happen with a valid ring; without a completion thread nothing could finish.
      log::Error("io_uring_wait_failed", "error", std::strerror(-r));
      std::abort();
    }
    auto* p = static_cast<Pending*>(io_uring_cqe_get_data(cqe));
    int64_t res = cqe->res;
    io_uring_cqe_seen(&ring_, cqe);
    if (p == nullptr) return;  // the destructor's stop NOP
    { MutexLock l(&mu_); }     // pairs with Submit's unlock: *p is fully visible here
    p->done(res);
    delete p;
    MutexLock l(&mu_);
    --in_flight_;
    room_.SignalAll();
  }
}

absl::Status UringSegmentIo::Allocate(int fd, uint64_t offset, uint64_t len) {
  if (::fallocate(fd, 0, static_cast<off_t>(offset), static_cast<off_t>(len)) != 0) {
    return ErrnoToStatus(errno, StrCat("fallocate ", len, " bytes"));
  }
  return absl::OkStatus();
}

absl::Status UringSegmentIo::PunchHole(int fd, uint64_t offset, uint64_t len) {
  if (::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                  static_cast<off_t>(len)) != 0) {
    if (errno == EOPNOTSUPP) {
      return absl::UnimplementedError("the filesystem cannot punch holes (EOPNOTSUPP)");
    }
    return ErrnoToStatus(errno, "punch hole");
  }
  return absl::OkStatus();
}

absl::Status UringSegmentIo::SyncData(int fd) {
  int r;
  do {
    r = ::fdatasync(fd);
  } while (r != 0 && errno == EINTR);
  if (r != 0) return ErrnoToStatus(errno, "fdatasync");
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<SegmentIo>> NewUringSegmentIo(int depth) {
  if (depth < 1 || depth > 4096) {
    return absl::InvalidArgumentError(StrCat("io_uring depth ", depth, " outside 1..4096"));
  }
  auto io = std::make_unique<UringSegmentIo>(depth);
  RETURN_IF_ERROR(io->Start());
  return io;
}

void RunIoBatch(SegmentIo* io, std::span<const IoRequest> reqs, int max_in_flight,
                const std::function<void(size_t, int64_t)>& on_done) {
  struct State {
    Mutex mu;
    CondVar cv;
    std::deque<std::pair<size_t, int64_t>> done ABSL_GUARDED_BY(mu);
  } st;
  size_t next = 0, completed = 0;
  int in_flight = 0;
  while (completed < reqs.size()) {
    while (next < reqs.size() && in_flight < std::max(1, max_in_flight)) {
      io->Submit(reqs[next], [&st, i = next](int64_t r) {
        MutexLock l(&st.mu);
        st.done.emplace_back(i, r);
        st.cv.Signal();
      });
      ++next;
      ++in_flight;
    }
    std::pair<size_t, int64_t> d;
    {
      MutexLock l(&st.mu);
      while (st.done.empty()) st.cv.Wait(&st.mu);
      d = st.done.front();
      st.done.pop_front();
    }
    --in_flight;
    ++completed;
    on_done(d.first, d.second);
  }
}

void FaultInjectingSegmentIo::Submit(const IoRequest& req, IoCallback done) {
  if (req.op == IoRequest::Op::kWrite && write_errno_.load() != 0) {
    done(-write_errno_.load());
    return;
  }
  if (req.op == IoRequest::Op::kRead && flip_reads_.load()) {
    // Flip a byte in the middle of the largest buffer of the read (the page bytes).
    int big = 0;
    for (int i = 1; i < req.iovcnt; ++i) {
      if (req.iov[i].iov_len > req.iov[big].iov_len) big = i;
    }
    iovec target = req.iov[big];
    base()->Submit(req, [target, done = std::move(done)](int64_t r) {
      if (r > 0 && target.iov_len > 0) {
        static_cast<uint8_t*>(target.iov_base)[target.iov_len / 2] ^= 0x5a;
      }
      done(r);
    });
    return;
  }
  base()->Submit(req, std::move(done));
}

absl::Status FaultInjectingSegmentIo::Allocate(int fd, uint64_t offset, uint64_t len) {
  if (int e = alloc_errno_.load(); e != 0) return ErrnoToStatus(e, "fallocate (injected)");
  return base()->Allocate(fd, offset, len);
}

absl::Status FaultInjectingSegmentIo::SyncData(int fd) {
  ++syncs_;
  if (int e = sync_errno_.load(); e != 0) return ErrnoToStatus(e, "fdatasync (injected)");
  return base()->SyncData(fd);
}

}  // namespace kv
