// What a receiver offers a sender for one handoff (the prefill -> decode KV handoff,
// DESIGN.md "Prefill -> decode handoff"), and where a receiver keeps memory a transport may
// still touch.
//
// HandoffDestination is one region registered with the receiver's Transport, laid out as
// `slots` consecutive slots of `slot_bytes`. What a slot holds is agreed by the two sides
// from the model alone (model/serving_model.h HandoffLayout: an MLA model's KvCache blocks, a
// V4 model's per-layer state sections); the sender reports one XXH3-64 per slot, and the
// receiver uses the bytes only when every slot matches.
//
// RegionGraveyard keeps the memory of regions the transport refused to deregister
// (quarantined after a failed or cancelled transfer, transport/transport.h "Poisoning
// contract") alive until the graveyard is destroyed, which must happen after the Transport.
//
// Thread-safety: HandoffDestination is a value. RegionGraveyard is safe for concurrent use.
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <string>

#include "core/mutex.h"

namespace kv::transport {

struct HandoffDestination {
  std::string handoff_id;
  std::string node_id;          // the receiver
  std::string transport;        // Capabilities::name of the receiver's transport ("ucx", "inproc")
  std::string endpoint;         // Transport::address() of the receiver
  std::string region_key;       // RegisteredRegion::packed_key of the destination
  uint64_t region_address = 0;  // slot 0's address in the receiver's address space
  uint64_t slot_bytes = 0;
  int64_t slots = 0;
  // False when the receiver offers nothing (no transport, or a model without a handoff
  // layout): the sender then has nothing to do and the receiver computes the prompt.
  bool valid() const { return !endpoint.empty() && slots > 0 && slot_bytes > 0; }
};

class RegionGraveyard {
 public:
  void Bury(std::shared_ptr<void> memory) {
    kv::MutexLock l(&mu_);
    buried_.push_back(std::move(memory));
  }
  size_t size() {
    kv::MutexLock l(&mu_);
    return buried_.size();
  }

 private:
  kv::Mutex mu_;
  std::list<std::shared_ptr<void>> buried_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kv::transport
