#include "kvstore/kv_events.h"

#include <msgpack.h>

#include <chrono>
#include <zmq.hpp>

#include <charconv>

#include "core/logging.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kvstore/page_format.h"

namespace kv {
namespace {

// The end marker of a replay: -1 as a signed 64-bit big-endian integer.
constexpr char kEndSeq[8] = {'\xff', '\xff', '\xff', '\xff', '\xff', '\xff', '\xff', '\xff'};

std::string U64BigEndian(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 7; i >= 0; --i, v >>= 8) s[i] = static_cast<char>(v & 0xff);
  return s;
}

absl::Status ValidateEndpoint(std::string_view flag, std::string_view e) {
  auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError(StrCat(flag, " '", e, "': ", why));
  };
  if (e.rfind("ipc://", 0) == 0) {
    return e.size() > 6 ? absl::OkStatus() : bad("ipc:// needs a path");
  }
  if (e.rfind("tcp://", 0) != 0) return bad("must be tcp://HOST:PORT or ipc://PATH");
  std::string_view rest = e.substr(6);
  size_t colon = rest.rfind(':');
  if (colon == std::string_view::npos || colon == 0) return bad("must be tcp://HOST:PORT");
  std::string_view port = rest.substr(colon + 1);
  if (port == "*") return absl::OkStatus();
  uint32_t p = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
  if (port.empty() || ec != std::errc() || end != port.data() + port.size() || p > 65535) {
    return bad("port must be 0..65535 or *");
  }
  return absl::OkStatus();
}

// msgpack helpers over msgpack-c's packer.
struct Packer {
  msgpack_sbuffer buf;
  msgpack_packer pk;
  Packer() {
    msgpack_sbuffer_init(&buf);
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
  }
  ~Packer() { msgpack_sbuffer_destroy(&buf); }
  void Str(std::string_view s) {
    msgpack_pack_str(&pk, s.size());
    msgpack_pack_str_body(&pk, s.data(), s.size());
  }
  void Hash(const std::string& h, KvEventHashFormat f) {
    if (f == KvEventHashFormat::kBytes) {
      msgpack_pack_bin(&pk, h.size());
      msgpack_pack_bin_body(&pk, h.data(), h.size());
      return;
    }
    // vLLM's int form: the last 8 bytes, big-endian, as an unsigned integer.
    uint64_t v = 0;
    const size_t from = h.size() > 8 ? h.size() - 8 : 0;
    for (size_t i = from; i < h.size(); ++i) v = (v << 8) | static_cast<uint8_t>(h[i]);
    msgpack_pack_uint64(&pk, v);
  }
  void Hashes(const std::vector<std::string>& hs, KvEventHashFormat f) {
    msgpack_pack_array(&pk, hs.size());
    for (const std::string& h : hs) Hash(h, f);
  }
  void Medium(const std::string& m) {
    if (m.empty()) {
      msgpack_pack_nil(&pk);
    } else {
      Str(m);
    }
  }
};

std::string_view KindName(KvEventKind k) {
  switch (k) {
    case KvEventKind::kBlockStored:
      return "BlockStored";
    case KvEventKind::kBlockRemoved:
      return "BlockRemoved";
    case KvEventKind::kAllBlocksCleared:
      return "AllBlocksCleared";
  }
  return "";
}

// The fields after the tag, in vLLM's declaration order. The store knows no token ids
// (pages carry KV, not tokens) nor LoRA: token_ids is [] and lora_id nil.
void PackFields(Packer& p, const KvEvent& e, const KvEventsOptions& o, bool map) {
  auto key = [&](std::string_view k) {
    if (map) p.Str(k);
  };
  switch (e.kind) {
    case KvEventKind::kBlockStored:
      key("block_hashes");
      p.Hashes(e.block_hashes, o.hash_format);
      key("parent_block_hash");
      if (e.parent_block_hash.has_value()) {
        p.Hash(*e.parent_block_hash, o.hash_format);
      } else {
        msgpack_pack_nil(&p.pk);
      }
      key("token_ids");
      msgpack_pack_array(&p.pk, 0);
      key("block_size");
      msgpack_pack_uint32(&p.pk, e.block_size);
      key("lora_id");
      msgpack_pack_nil(&p.pk);
      key("medium");
      p.Medium(e.medium);
      return;
    case KvEventKind::kBlockRemoved:
      key("block_hashes");
      p.Hashes(e.block_hashes, o.hash_format);
      key("medium");
      p.Medium(e.medium);
      return;
    case KvEventKind::kAllBlocksCleared:
      return;
  }
}

size_t FieldCount(KvEventKind k) {
  switch (k) {
    case KvEventKind::kBlockStored:
      return 6;
    case KvEventKind::kBlockRemoved:
      return 2;
    case KvEventKind::kAllBlocksCleared:
      return 0;
  }
  return 0;
}

}  // namespace

absl::StatusOr<KvEventEncoding> ParseKvEventEncoding(std::string_view name) {
  if (name == "array") return KvEventEncoding::kArray;
  if (name == "map") return KvEventEncoding::kMap;
  return absl::InvalidArgumentError(
      StrCat("KV event encoding must be array or map; got '", name, "'"));
}

absl::StatusOr<KvEventHashFormat> ParseKvEventHashFormat(std::string_view name) {
  if (name == "int") return KvEventHashFormat::kInt;
  if (name == "bytes") return KvEventHashFormat::kBytes;
  return absl::InvalidArgumentError(
      StrCat("KV event hash format must be int or bytes; got '", name, "'"));
}

absl::Status ValidateKvEventsOptions(const KvEventsOptions& o) {
  RETURN_IF_ERROR(ValidateEndpoint("--kv-events-endpoint", o.endpoint));
  if (!o.replay_endpoint.empty()) {
    RETURN_IF_ERROR(ValidateEndpoint("--kv-events-replay-endpoint", o.replay_endpoint));
    const bool wildcard = o.endpoint.size() > 2 && o.endpoint.ends_with(":*");
    if (o.replay_endpoint == o.endpoint && !wildcard) {
      return absl::InvalidArgumentError(
          "--kv-events-replay-endpoint must differ from --kv-events-endpoint");
    }
  }
  if (o.buffer_steps == 0)
    return absl::InvalidArgumentError("--kv-events-buffer-steps must be > 0");
  if (o.queue_capacity == 0) return absl::InvalidArgumentError("--kv-events-queue must be > 0");
  if (o.max_batch_events == 0) return absl::InvalidArgumentError("max_batch_events must be > 0");
  if (o.batch_interval <= absl::ZeroDuration() || o.batch_interval > absl::Seconds(10)) {
    return absl::InvalidArgumentError("--kv-events-interval-ms must be in 1..10000");
  }
  return absl::OkStatus();
}

std::string_view MediumName(TierKind tier) {
  switch (tier) {
    case TierKind::kDevice:
      return "GPU";
    case TierKind::kHost:
      return "CPU";
    case TierKind::kNvme:
      return "DISK";
  }
  return "";
}

KvEvent ResidencyEvent(const IndexEntry& e, const IndexEntry* parent, TierKind tier, bool stored) {
  auto hash_of = [](const IndexEntry& x) {
    const BlockKey& k = x.client_key();  // the key the page names, not a storage key
    return x.engine_hash.empty()
               ? std::string(reinterpret_cast<const char*>(k.bytes.data()), k.bytes.size())
               : x.engine_hash;
  };
  KvEvent ev;
  ev.kind = stored ? KvEventKind::kBlockStored : KvEventKind::kBlockRemoved;
  ev.block_hashes.push_back(hash_of(e));
  ev.medium = std::string(MediumName(tier));
  if (!stored) return ev;
  if (parent != nullptr) {
    ev.parent_block_hash = hash_of(*parent);
  } else if (!e.parent.IsZero()) {  // not expected (the index is prefix-closed)
    const BlockKey& p = e.page_key.IsZero() ? e.parent : e.page_parent;
    ev.parent_block_hash =
        std::string(reinterpret_cast<const char*>(p.bytes.data()), p.bytes.size());
  }
  ev.block_size = e.geometry.token_count;
  if (ev.block_size == 0) {  // recovered from nvme and not read yet: the layout's default
    absl::StatusOr<LayoutInfo> l = LookupLayout(e.layout);
    if (l.ok()) ev.block_size = l->default_page_tokens;
  }
  return ev;
}

std::string EncodeKvEventBatch(double ts, std::span<const KvEvent> events,
                               const KvEventsOptions& o) {
  Packer p;
  msgpack_pack_array(&p.pk, 3);
  msgpack_pack_double(&p.pk, ts);
  msgpack_pack_array(&p.pk, events.size());
  const bool map = o.encoding == KvEventEncoding::kMap;
  for (const KvEvent& e : events) {
    if (map) {
      msgpack_pack_map(&p.pk, 1 + FieldCount(e.kind));
      p.Str("type");
    } else {
      msgpack_pack_array(&p.pk, 1 + FieldCount(e.kind));
    }
    p.Str(KindName(e.kind));
    PackFields(p, e, o, map);
  }
  if (o.data_parallel_rank.has_value()) {
    msgpack_pack_int64(&p.pk, *o.data_parallel_rank);
  } else {
    msgpack_pack_nil(&p.pk);
  }
  return std::string(p.buf.data, p.buf.size);
}

// ---- KvEventPublisher -----------------------------------------------------------------------

struct KvEventPublisher::Sockets {
  zmq::context_t ctx{1};
  zmq::socket_t pub{ctx, zmq::socket_type::pub};
  std::optional<zmq::socket_t> replay;
};

absl::StatusOr<std::unique_ptr<KvEventPublisher>> KvEventPublisher::Start(KvEventsOptions o) {
  RETURN_IF_ERROR(ValidateKvEventsOptions(o));
  auto s = std::make_unique<Sockets>();
  auto bind = [](zmq::socket_t& sock, const std::string& ep, std::string_view what,
                 std::string* bound) -> absl::Status {
    try {
      sock.set(zmq::sockopt::linger, 1000);  // the destructor's flush waits at most 1 s
      sock.bind(ep);
      *bound = sock.get(zmq::sockopt::last_endpoint);
    } catch (const zmq::error_t& e) {
      return absl::UnavailableError(
          StrCat("cannot bind the KV events ", what, " socket at ", ep, ": ", e.what()));
    }
    return absl::OkStatus();
  };
  std::string ep, rep;
  RETURN_IF_ERROR(bind(s->pub, o.endpoint, "publisher", &ep));
  if (!o.replay_endpoint.empty()) {
    s->replay.emplace(s->ctx, zmq::socket_type::router);
    RETURN_IF_ERROR(bind(*s->replay, o.replay_endpoint, "replay", &rep));
  }
  std::unique_ptr<KvEventPublisher> p(new KvEventPublisher(std::move(o), std::move(s)));
  p->endpoint_ = ep;
  p->replay_endpoint_ = rep;
  p->thread_ = std::thread([raw = p.get()] { raw->Run(); });
  log::Info("kv_events_started", "endpoint", ep, "replay_endpoint", rep, "topic", p->options_.topic,
            "encoding", p->options_.encoding == KvEventEncoding::kMap ? "map" : "array");
  return p;
}

KvEventPublisher::KvEventPublisher(KvEventsOptions options, std::unique_ptr<Sockets> sockets)
    : options_(std::move(options)), sockets_(std::move(sockets)) {
  MetricsRegistry* reg = options_.metrics ? options_.metrics : &MetricsRegistry::Default();
  dropped_ = reg->GetCounter("kvstrata_store_kv_events_dropped_total",
                             "KV events dropped because the publisher's queue was full");
  published_ = reg->GetCounter("kvstrata_store_kv_events_published_total", "KV events sent");
  batches_ = reg->GetCounter("kvstrata_store_kv_event_batches_total", "KV event batches sent");
}

KvEventPublisher::~KvEventPublisher() {
  {
    MutexLock l(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

bool KvEventPublisher::Publish(KvEvent event) {
  MutexLock l(&mu_);
  if (stop_ || queue_.size() >= options_.queue_capacity) {
    ++dropped_total_;
    dropped_->Inc();
    return false;
  }
  queue_.push_back(std::move(event));
  ++queued_total_;
  return true;
}

ResidencyListener KvEventPublisher::Listener() {
  return [this](const IndexEntry& e, const IndexEntry* parent, TierKind tier, bool stored) {
    Publish(ResidencyEvent(e, parent, tier, stored));
  };
}

bool KvEventPublisher::Flush(absl::Duration timeout) {
  MutexLock l(&mu_);
  const uint64_t target = queued_total_;
  auto done = [this, target]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return sent_total_ >= target; };
  return mu_.AwaitWithTimeout(Condition(&done), timeout);
}

uint64_t KvEventPublisher::dropped() const {
  MutexLock l(&mu_);
  return dropped_total_;
}

void KvEventPublisher::Run() {
  const auto interval = std::chrono::milliseconds(
      std::max<int64_t>(1, absl::ToInt64Milliseconds(options_.batch_interval)));
  std::vector<KvEvent> batch;
  for (;;) {
    if (sockets_->replay.has_value()) {
      zmq::pollitem_t item{sockets_->replay->handle(), 0, ZMQ_POLLIN, 0};
      try {
        zmq::poll(&item, 1, interval);
      } catch (const zmq::error_t& e) {
        log::Warn("kv_events_poll_failed", "error", e.what());
      }
      if (item.revents & ZMQ_POLLIN) ServeReplay();
    } else {
      std::this_thread::sleep_for(interval);
    }
    bool stop = false;
    {
      MutexLock l(&mu_);
      while (!queue_.empty() && batch.size() < options_.max_batch_events) {
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
      stop = stop_ && queue_.empty();
    }
    if (!batch.empty()) SendBatch(batch);
    if (stop) return;
  }
}

void KvEventPublisher::SendBatch(std::vector<KvEvent>& events) {
  const double ts = absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch());
  std::string payload = EncodeKvEventBatch(ts, events, options_);
  const uint64_t seq = next_seq_++;
  try {
    sockets_->pub.send(zmq::buffer(options_.topic), zmq::send_flags::sndmore);
    sockets_->pub.send(zmq::buffer(U64BigEndian(seq)), zmq::send_flags::sndmore);
    sockets_->pub.send(zmq::buffer(payload), zmq::send_flags::dontwait);
  } catch (const zmq::error_t& e) {
    log::Warn("kv_events_send_failed", "seq", seq, "error", e.what());
  }
  ring_.emplace_back(seq, std::move(payload));
  while (ring_.size() > options_.buffer_steps) ring_.pop_front();
  published_->Inc(static_cast<double>(events.size()));
  batches_->Inc();
  MutexLock l(&mu_);
  sent_total_ += events.size();
  events.clear();
}

// A request is [identity, "", start seq u64 BE] (a REQ or DEALER-with-delimiter client).
void KvEventPublisher::ServeReplay() {
  zmq::socket_t& r = *sockets_->replay;
  std::vector<zmq::message_t> frames;
  try {
    for (;;) {
      zmq::message_t m;
      if (!r.recv(m, zmq::recv_flags::dontwait)) break;
      const bool more = m.more();
      frames.push_back(std::move(m));
      if (!more) break;
    }
    if (frames.size() != 3 || frames[1].size() != 0 || frames[2].size() != 8) {
      log::Warn("kv_events_bad_replay_request", "frames", frames.size());
      return;
    }
    uint64_t start = 0;
    const auto* b = static_cast<const uint8_t*>(frames[2].data());
    for (int i = 0; i < 8; ++i) start = (start << 8) | b[i];
    const std::string id(static_cast<const char*>(frames[0].data()), frames[0].size());
    for (const auto& [seq, payload] : ring_) {
      if (seq < start) continue;
      r.send(zmq::buffer(id), zmq::send_flags::sndmore);
      r.send(zmq::message_t(), zmq::send_flags::sndmore);
      r.send(zmq::buffer(U64BigEndian(seq)), zmq::send_flags::sndmore);
      r.send(zmq::buffer(payload), zmq::send_flags::none);
    }
    r.send(zmq::buffer(id), zmq::send_flags::sndmore);
    r.send(zmq::message_t(), zmq::send_flags::sndmore);
    r.send(zmq::buffer(kEndSeq, 8), zmq::send_flags::sndmore);
    r.send(zmq::message_t(), zmq::send_flags::none);
  } catch (const zmq::error_t& e) {
    log::Warn("kv_events_replay_failed", "error", e.what());
  }
}

}  // namespace kv
