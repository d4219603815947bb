// In-process transport: endpoints in one process that move bytes with memcpy. It implements
// the full Transport contract (lifecycle, deadlines, poisoning) so that kvstore, prefill and
// decode tests run without UCX, and so the fault-injecting wrapper has a fast target.
//
// Endpoints meet through an InProcFabric: each InProcTransport attaches to one fabric and is
// reachable by its address() ("inproc:<fabric>:<n>") from other endpoints of that fabric.
// A batch is executed op by op on the endpoint's own worker thread, so kInProgress is a real,
// observable state and Cancel() can stop a batch between ops. A write into a peer's region
// marks that region in use at the peer for the duration of the copy, so the peer cannot
// deregister it mid-copy.
//
// Thread-safe. The fabric must outlive its endpoints. Destroying an endpoint tears down its
// peers' view of it: their in-progress transfers to it fail with Unavailable.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "core/clock.h"
#include "transport/transport.h"

namespace kv::transport {

class InProcFabric {
 public:
  InProcFabric();
  InProcFabric(const InProcFabric&) = delete;
  InProcFabric& operator=(const InProcFabric&) = delete;

 private:
  friend class InProcTransport;
  struct Endpoint;
  std::string NextAddress();
  void Attach(const std::string& address, std::weak_ptr<Endpoint> ep);
  void Detach(const std::string& address);
  std::shared_ptr<Endpoint> Find(std::string_view address);

  const uint64_t id_;
  absl::Mutex mu_;
  uint64_t next_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<std::string, std::weak_ptr<Endpoint>> endpoints_ ABSL_GUARDED_BY(mu_);
};

class InProcTransport : public Transport {
 public:
  // `clock` (not owned, may be null for Clock::Real()) supplies deadlines.
  explicit InProcTransport(InProcFabric* fabric, Clock* clock = nullptr);
  ~InProcTransport() override;

  Capabilities capabilities() const override;
  std::string address() const override;
  absl::StatusOr<RegisteredRegion> Register(void* base, size_t length, MemoryKind kind) override;
  absl::Status Deregister(RegionId id) override;
  absl::StatusOr<RegionState> GetRegionState(RegionId id) const override;
  absl::StatusOr<PeerId> Connect(std::string_view address, absl::Time deadline) override;
  absl::Status Disconnect(PeerId peer) override;
  absl::StatusOr<RemoteRegionId> ImportRemoteRegion(PeerId peer,
                                                    std::string_view packed_key) override;
  absl::StatusOr<TransferId> Prepare(const TransferBatch& batch) override;
  absl::Status Post(TransferId id, absl::Time deadline) override;
  absl::StatusOr<TransferStatus> Poll(TransferId id) override;
  absl::Status Wait(TransferId id, absl::Time deadline) override;
  absl::Status Cancel(TransferId id) override;
  absl::Status Release(TransferId id) override;
  absl::Status SendTagged(PeerId peer, uint32_t tag, std::string_view payload,
                          absl::Time deadline) override;
  absl::StatusOr<TaggedMessage> ReceiveTagged(uint32_t tag, absl::Time deadline) override;

 private:
  using Endpoint = InProcFabric::Endpoint;
  void WorkerLoop();
  void Execute(TransferId id);

  InProcFabric* const fabric_;
  std::shared_ptr<Endpoint> self_;
  std::thread worker_;
};

}  // namespace kv::transport
