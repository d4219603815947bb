// KV events in vLLM's wire format (vllm/distributed/kv_events.py; docs/serving.md
// "KV events"): a store node tells routers (Dynamo, llm-d, vLLM's own subscriber) which blocks
// it holds in which medium.
//
// Transport. A ZMQ PUB socket bound at `endpoint` sends one three-frame message per batch:
// the topic, the batch's sequence number as u64 big-endian (0, 1, 2, ... from the start of
// the process), and msgpack `EventBatch` = [ts (float seconds), events, data_parallel_rank
// (int or nil)]. A ROUTER socket at `replay_endpoint` answers a request
// [identity, "", start sequence u64 BE] with [identity, "", seq, payload] for every buffered
// batch with seq >= start (the last `buffer_steps` batches), then [identity, "", -1 as i64
// BE, ""] (the end marker).
//
// Events. BlockStored(block_hashes, parent_block_hash, token_ids, block_size, lora_id,
// medium), BlockRemoved(block_hashes, medium), AllBlocksCleared(). `encoding` picks the
// inner form: a tagged array ["BlockStored", hashes, parent, token_ids, block_size, lora_id,
// medium] (trailing defaulted fields omitted, as msgspec's array_like + omit_defaults does),
// or a map {"type": "BlockStored", ...} without the defaulted fields (lora_name, extra_keys,
// group_idx, kv_cache_spec_*). Hashes are ints (the low 64 bits of the hash: its last
// 8 bytes, big-endian; vLLM's default) or raw bytes (`hash_format`).
//
// Publishing never blocks the store: Publish() appends to a bounded queue under a short
// mutex and returns; a full queue drops the event and counts it in
// kvstrata_store_kv_events_dropped_total. One publisher thread owns both sockets: it
// batches what is queued every `batch_interval`, sends it, keeps it for replay and answers
// replay requests.
//
// Thread-safety: Publish(), Listener()'s callback, Flush() and the accessors are safe for
// concurrent use. Ownership: the publisher owns its sockets and thread; the destructor
// publishes what is queued (bounded by the sockets' linger) and joins. A Listener() must not
// outlive the publisher.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/metrics.h"
#include "core/mutex.h"
#include "kvstore/prefix_index.h"
#include "kvstore/tier.h"

namespace kv {

enum class KvEventEncoding { kArray, kMap };
enum class KvEventHashFormat { kInt, kBytes };

// "array" | "map"; InvalidArgument naming the value otherwise.
absl::StatusOr<KvEventEncoding> ParseKvEventEncoding(std::string_view name);
// "int" | "bytes"; InvalidArgument naming the value otherwise.
absl::StatusOr<KvEventHashFormat> ParseKvEventHashFormat(std::string_view name);

struct KvEventsOptions {
  std::string endpoint;         // PUB bind address, tcp://HOST:PORT or ipc://PATH; required
  std::string replay_endpoint;  // ROUTER bind address; empty: no replay socket
  std::string topic;            // the first frame of every message ("" as vLLM's default)
  KvEventEncoding encoding = KvEventEncoding::kArray;
  KvEventHashFormat hash_format = KvEventHashFormat::kInt;
  size_t buffer_steps = 10000;     // batches kept for replay (vLLM's default)
  size_t queue_capacity = 100000;  // events waiting for the publisher; more are dropped
  size_t max_batch_events = 4096;  // events per batch at most
  absl::Duration batch_interval = absl::Milliseconds(10);
  std::optional<int64_t> data_parallel_rank;  // nil on the wire when unset
  MetricsRegistry* metrics = nullptr;         // nullptr: MetricsRegistry::Default()
};

// Checks options without side effects: endpoints (scheme tcp:// with HOST:PORT, PORT
// 0..65535 or *, or ipc://PATH), sizes and interval. InvalidArgument naming the option.
absl::Status ValidateKvEventsOptions(const KvEventsOptions& options);

enum class KvEventKind { kBlockStored, kBlockRemoved, kAllBlocksCleared };

struct KvEvent {
  KvEventKind kind = KvEventKind::kAllBlocksCleared;
  // Raw hash bytes: the engine's block hash (PageMeta::engine_hash), or the 32-byte kvstrata
  // key when the writer gave none.
  std::vector<std::string> block_hashes;
  std::optional<std::string> parent_block_hash;  // BlockStored; nullopt: a first block (nil)
  uint32_t block_size = 0;                       // BlockStored: tokens per block
  std::string medium;                            // MediumName() of the tier
};

// The medium names events carry: device "GPU", host "CPU", nvme "DISK".
std::string_view MediumName(TierKind tier);

// The event a residency change of `e` makes (BlockStored when `stored`, else BlockRemoved).
KvEvent ResidencyEvent(const IndexEntry& e, const IndexEntry* parent, TierKind tier, bool stored);

// msgpack EventBatch [ts, events, data_parallel_rank] in `options`' encoding and hash format.
std::string EncodeKvEventBatch(double ts, std::span<const KvEvent> events,
                               const KvEventsOptions& options);

class KvEventPublisher {
 public:
  // Binds the sockets and starts the thread. InvalidArgument for bad options; Unavailable
  // naming the endpoint when a socket cannot bind (address in use, bad interface).
  static absl::StatusOr<std::unique_ptr<KvEventPublisher>> Start(KvEventsOptions options);
  ~KvEventPublisher();
  KvEventPublisher(const KvEventPublisher&) = delete;
  KvEventPublisher& operator=(const KvEventPublisher&) = delete;

  // Queues `event`; never blocks on the network. false when the queue is full (dropped,
  // counted).
  bool Publish(KvEvent event);
  // A TieredStoreOptions::residency_listener that publishes ResidencyEvent()s.
  ResidencyListener Listener();
  // Waits until every event queued before the call has been sent. false on timeout.
  bool Flush(absl::Duration timeout);

  // The bound endpoints (a wildcard port resolved), "" for no replay socket.
  const std::string& endpoint() const { return endpoint_; }
  const std::string& replay_endpoint() const { return replay_endpoint_; }
  uint64_t dropped() const;

 private:
  struct Sockets;
  KvEventPublisher(KvEventsOptions options, std::unique_ptr<Sockets> sockets);
  void Run();
  void SendBatch(std::vector<KvEvent>& events);
  void ServeReplay();

  const KvEventsOptions options_;
  std::unique_ptr<Sockets> sockets_;  // used by the thread only, once it runs
  std::string endpoint_, replay_endpoint_;
  Counter* dropped_;
  Counter* published_;
  Counter* batches_;
  mutable Mutex mu_;
  std::deque<KvEvent> queue_ ABSL_GUARDED_BY(mu_);
  uint64_t queued_total_ ABSL_GUARDED_BY(mu_) = 0;  // events ever accepted
  uint64_t sent_total_ ABSL_GUARDED_BY(mu_) = 0;    // events ever sent
  uint64_t dropped_total_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  // Thread-only state.
  uint64_t next_seq_ = 0;
  std::deque<std::pair<uint64_t, std::string>> ring_;  // (seq, payload) for replay
  std::thread thread_;                                 // last: joined before the rest is destroyed
};

}  // namespace kv
