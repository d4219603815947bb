// KV events: the msgpack encoder (decoded here with msgpack-c, every field, both encodings,
// both hash formats), the publisher's wire frames, sequence numbers, replay and drop
// accounting over real ZMQ sockets on loopback, and the TieredStore residency hooks
// (including an nvme restart, which must keep the engine's block hashes).
#include "kvstore/kv_events.h"

#include <gtest/gtest.h>
#include <msgpack.h>

#include <zmq.hpp>

#include "kvstore/fake_tiers.h"
#include "kvstore/nvme_tier.h"
#include "kvstore/test_pages.h"
#include "kvstore/tiered_store.h"

namespace kv {
namespace {

using testing::MakeChain;

// A decoded msgpack document (owns its zone and its bytes: strings point into them).
struct Doc {
  std::string bytes;
  msgpack_unpacked u;
  Doc() { msgpack_unpacked_init(&u); }
  ~Doc() { msgpack_unpacked_destroy(&u); }
  const msgpack_object& root() const { return u.data; }
};

void Decode(const std::string& bytes, Doc& d) {
  d.bytes = bytes;
  size_t off = 0;
  ASSERT_EQ(msgpack_unpack_next(&d.u, d.bytes.data(), d.bytes.size(), &off),
            MSGPACK_UNPACK_SUCCESS);
  ASSERT_EQ(off, d.bytes.size()) << "trailing bytes after the EventBatch";
}

std::string Str(const msgpack_object& o) {
  EXPECT_EQ(o.type, MSGPACK_OBJECT_STR);
  return std::string(o.via.str.ptr, o.via.str.size);
}

// The field `name` of a map object; nullptr when absent.
const msgpack_object* Field(const msgpack_object& map, std::string_view name) {
  for (uint32_t i = 0; i < map.via.map.size; ++i) {
    const msgpack_object_kv& kv = map.via.map.ptr[i];
    if (kv.key.type == MSGPACK_OBJECT_STR &&
        std::string_view(kv.key.via.str.ptr, kv.key.via.str.size) == name) {
      return &kv.val;
    }
  }
  return nullptr;
}

std::string Hash32(uint8_t seed) {
  std::string h(32, '\0');
  for (int i = 0; i < 32; ++i) h[i] = static_cast<char>(seed + i);
  return h;
}

uint64_t Low64(const std::string& h) {
  uint64_t v = 0;
  for (size_t i = h.size() - 8; i < h.size(); ++i) v = (v << 8) | static_cast<uint8_t>(h[i]);
  return v;
}

std::vector<KvEvent> SampleEvents() {
  KvEvent stored{.kind = KvEventKind::kBlockStored,
                 .block_hashes = {Hash32(1)},
                 .parent_block_hash = Hash32(100),
                 .block_size = 64,
                 .medium = "CPU"};
  KvEvent first{.kind = KvEventKind::kBlockStored,
                .block_hashes = {Hash32(7)},
                .block_size = 16,
                .medium = "DISK"};
  KvEvent removed{.kind = KvEventKind::kBlockRemoved, .block_hashes = {Hash32(1)}, .medium = "GPU"};
  KvEvent cleared{.kind = KvEventKind::kAllBlocksCleared};
  return {stored, first, removed, cleared};
}

void ExpectHash(const msgpack_object& o, const std::string& h, KvEventHashFormat f) {
  if (f == KvEventHashFormat::kInt) {
    ASSERT_EQ(o.type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    EXPECT_EQ(o.via.u64, Low64(h));
  } else {
    ASSERT_EQ(o.type, MSGPACK_OBJECT_BIN);
    EXPECT_EQ(std::string(o.via.bin.ptr, o.via.bin.size), h);
  }
}

// Checks the four SampleEvents() in tagged-array form.
void CheckArrayEvents(const msgpack_object& events, KvEventHashFormat f) {
  ASSERT_EQ(events.type, MSGPACK_OBJECT_ARRAY);
  ASSERT_EQ(events.via.array.size, 4u);
  const msgpack_object* e = events.via.array.ptr;
  // ["BlockStored", hashes, parent, token_ids, block_size, lora_id, medium]
  ASSERT_EQ(e[0].type, MSGPACK_OBJECT_ARRAY);
  ASSERT_EQ(e[0].via.array.size, 7u);
  const msgpack_object* s = e[0].via.array.ptr;
  EXPECT_EQ(Str(s[0]), "BlockStored");
  ASSERT_EQ(s[1].via.array.size, 1u);
  ExpectHash(s[1].via.array.ptr[0], Hash32(1), f);
  ExpectHash(s[2], Hash32(100), f);
  EXPECT_EQ(s[3].type, MSGPACK_OBJECT_ARRAY);
  EXPECT_EQ(s[3].via.array.size, 0u);
  EXPECT_EQ(s[4].via.u64, 64u);
  EXPECT_EQ(s[5].type, MSGPACK_OBJECT_NIL);
  EXPECT_EQ(Str(s[6]), "CPU");
  const msgpack_object* s1 = e[1].via.array.ptr;
  EXPECT_EQ(s1[2].type, MSGPACK_OBJECT_NIL) << "a first block has no parent";
  EXPECT_EQ(s1[4].via.u64, 16u);
  EXPECT_EQ(Str(s1[6]), "DISK");
  // ["BlockRemoved", hashes, medium]
  ASSERT_EQ(e[2].via.array.size, 3u);
  EXPECT_EQ(Str(e[2].via.array.ptr[0]), "BlockRemoved");
  ExpectHash(e[2].via.array.ptr[1].via.array.ptr[0], Hash32(1), f);
  EXPECT_EQ(Str(e[2].via.array.ptr[2]), "GPU");
  ASSERT_EQ(e[3].via.array.size, 1u);
  EXPECT_EQ(Str(e[3].via.array.ptr[0]), "AllBlocksCleared");
}

TEST(KvEventsEncode, ArrayEncodingEveryField) {
  for (KvEventHashFormat f : {KvEventHashFormat::kInt, KvEventHashFormat::kBytes}) {
    KvEventsOptions o{.encoding = KvEventEncoding::kArray, .hash_format = f};
    const std::vector<KvEvent> ev = SampleEvents();
    Doc d;
    Decode(EncodeKvEventBatch(1234.5, ev, o), d);
    const msgpack_object& b = d.root();
    ASSERT_EQ(b.type, MSGPACK_OBJECT_ARRAY);
    ASSERT_EQ(b.via.array.size, 3u) << "EventBatch is [ts, events, data_parallel_rank]";
    EXPECT_EQ(b.via.array.ptr[0].type, MSGPACK_OBJECT_FLOAT64);
    EXPECT_DOUBLE_EQ(b.via.array.ptr[0].via.f64, 1234.5);
    CheckArrayEvents(b.via.array.ptr[1], f);
    EXPECT_EQ(b.via.array.ptr[2].type, MSGPACK_OBJECT_NIL);
  }
}

TEST(KvEventsEncode, MapEncodingEveryFieldAndNoDefaults) {
  KvEventsOptions o{.encoding = KvEventEncoding::kMap, .data_parallel_rank = 3};
  Doc d;
  Decode(EncodeKvEventBatch(7.0, SampleEvents(), o), d);
  const msgpack_object& b = d.root();
  ASSERT_EQ(b.via.array.size, 3u);
  EXPECT_EQ(b.via.array.ptr[2].via.u64, 3u);
  const msgpack_object* e = b.via.array.ptr[1].via.array.ptr;
  ASSERT_EQ(e[0].type, MSGPACK_OBJECT_MAP);
  EXPECT_EQ(e[0].via.map.size, 7u) << "type + six fields, defaulted ones omitted";
  EXPECT_EQ(Str(*Field(e[0], "type")), "BlockStored");
  ExpectHash(Field(e[0], "block_hashes")->via.array.ptr[0], Hash32(1), KvEventHashFormat::kInt);
  ExpectHash(*Field(e[0], "parent_block_hash"), Hash32(100), KvEventHashFormat::kInt);
  EXPECT_EQ(Field(e[0], "token_ids")->via.array.size, 0u);
  EXPECT_EQ(Field(e[0], "block_size")->via.u64, 64u);
  EXPECT_EQ(Field(e[0], "lora_id")->type, MSGPACK_OBJECT_NIL);
  EXPECT_EQ(Str(*Field(e[0], "medium")), "CPU");
  EXPECT_EQ(Field(e[0], "lora_name"), nullptr);
  EXPECT_EQ(Field(e[0], "group_idx"), nullptr);
  EXPECT_EQ(Field(e[1], "parent_block_hash")->type, MSGPACK_OBJECT_NIL);
  ASSERT_EQ(e[2].via.map.size, 3u);
  EXPECT_EQ(Str(*Field(e[2], "type")), "BlockRemoved");
  EXPECT_EQ(Str(*Field(e[2], "medium")), "GPU");
  ExpectHash(Field(e[2], "block_hashes")->via.array.ptr[0], Hash32(1), KvEventHashFormat::kInt);
  ASSERT_EQ(e[3].via.map.size, 1u);
  EXPECT_EQ(Str(*Field(e[3], "type")), "AllBlocksCleared");
}

TEST(KvEventsOptions, BadValuesAreRefusedByName) {
  KvEventsOptions o{.endpoint = "tcp://127.0.0.1:5557"};
  EXPECT_TRUE(ValidateKvEventsOptions(o).ok());
  for (const char* bad : {"", "127.0.0.1:5557", "tcp://127.0.0.1", "tcp://h:99999", "tcp://h:abc",
                          "udp://h:1", "ipc://"}) {
    o.endpoint = bad;
    absl::Status s = ValidateKvEventsOptions(o);
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << bad;
    EXPECT_NE(s.message().find("--kv-events-endpoint"), std::string_view::npos) << s;
  }
  o.endpoint = "tcp://127.0.0.1:5557";
  o.replay_endpoint = o.endpoint;
  EXPECT_TRUE(absl::IsInvalidArgument(ValidateKvEventsOptions(o)));
  EXPECT_FALSE(ParseKvEventEncoding("tagged").ok());
  EXPECT_FALSE(ParseKvEventHashFormat("hex").ok());
  // A busy port is a startup error naming the endpoint.
  auto a = KvEventPublisher::Start({.endpoint = "tcp://127.0.0.1:*"});
  ASSERT_TRUE(a.ok()) << a.status();
  auto b = KvEventPublisher::Start({.endpoint = (*a)->endpoint()});
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.status().message().find((*a)->endpoint()), std::string_view::npos);
}

// Receives one three-frame message within `ms`; false on timeout.
bool RecvMessage(zmq::socket_t& s, std::vector<std::string>& frames, int ms) {
  frames.clear();
  s.set(zmq::sockopt::rcvtimeo, ms);
  for (;;) {
    zmq::message_t m;
    if (!s.recv(m)) return false;
    frames.push_back(m.to_string());
    if (!m.more()) return true;
  }
}

uint64_t BigEndian(const std::string& b) {
  uint64_t v = 0;
  for (char c : b) v = (v << 8) | static_cast<uint8_t>(c);
  return v;
}

struct Wire {
  std::unique_ptr<KvEventPublisher> pub;
  zmq::context_t ctx{1};
  zmq::socket_t sub{ctx, zmq::socket_type::sub};
};

// A publisher and a subscriber that has received the first (warm-up) batch: ZMQ drops what
// a PUB sends before a subscription arrives, so the warm-up repeats (bounded) until one lands.
void Connect(Wire& w, KvEventsOptions o) {
  auto p = KvEventPublisher::Start(std::move(o));
  ASSERT_TRUE(p.ok()) << p.status();
  w.pub = *std::move(p);
  w.sub.set(zmq::sockopt::subscribe, "");
  w.sub.connect(w.pub->endpoint());
  std::vector<std::string> f;
  for (int i = 0; i < 100; ++i) {
    w.pub->Publish(KvEvent{.kind = KvEventKind::kAllBlocksCleared});
    if (RecvMessage(w.sub, f, 50)) return;
  }
  FAIL() << "the subscriber never received a batch";
}

TEST(KvEventPublisher, FramesSequenceAndReplay) {
  Wire w;
  Connect(w, {.endpoint = "tcp://127.0.0.1:*",
              .replay_endpoint = "tcp://127.0.0.1:*",
              .topic = "kv@store1",
              .buffer_steps = 3,
              .batch_interval = absl::Milliseconds(2)});
  std::vector<std::string> f;
  // Drain the warm-up duplicates, then send 5 batches one at a time.
  while (RecvMessage(w.sub, f, 100)) {
  }
  uint64_t last = 0;
  std::vector<std::string> payloads;
  for (int i = 0; i < 5; ++i) {
    std::vector<KvEvent> ev = SampleEvents();
    ASSERT_TRUE(w.pub->Publish(ev[0]));
    ASSERT_TRUE(w.pub->Flush(absl::Seconds(5)));
    ASSERT_TRUE(RecvMessage(w.sub, f, 5000));
    ASSERT_EQ(f.size(), 3u);
    EXPECT_EQ(f[0], "kv@store1");
    ASSERT_EQ(f[1].size(), 8u);
    if (i > 0) {
      EXPECT_EQ(BigEndian(f[1]), last + 1) << "sequence numbers are consecutive";
    }
    last = BigEndian(f[1]);
    Doc d;
    Decode(f[2], d);
    EXPECT_EQ(Str(d.root().via.array.ptr[1].via.array.ptr[0].via.array.ptr[0]), "BlockStored");
    payloads.push_back(f[2]);
  }
  // Replay from last-1: the two last batches, then the end marker. The ring holds 3.
  // A DEALER with the REQ-style empty delimiter: a REQ socket would keep only the first reply.
  zmq::socket_t req(w.ctx, zmq::socket_type::dealer);
  req.connect(w.pub->replay_endpoint());
  for (uint64_t start : {last - 1, uint64_t{0}}) {
    std::string s(8, '\0');
    for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(start >> (56 - 8 * i));
    req.send(zmq::message_t(), zmq::send_flags::sndmore);
    req.send(zmq::buffer(s));
    std::vector<uint64_t> seqs;
    for (int n = 0; n < 10; ++n) {
      ASSERT_TRUE(RecvMessage(req, f, 5000)) << "no replay answer";
      ASSERT_EQ(f.size(), 3u);
      EXPECT_EQ(f[0], "") << "the delimiter frame";
      if (f[1] == std::string(8, '\xff')) {
        EXPECT_EQ(f[2], "");
        break;
      }
      seqs.push_back(BigEndian(f[1]));
      if (BigEndian(f[1]) == last) {
        EXPECT_EQ(f[2], payloads.back());
      }
    }
    if (start != 0) {
      EXPECT_EQ(seqs, (std::vector<uint64_t>{last - 1, last}));
    } else {
      EXPECT_EQ(seqs, (std::vector<uint64_t>{last - 2, last - 1, last})) << "bounded ring";
    }
  }
}

TEST(KvEventPublisher, FullQueueDropsAndCounts) {
  MetricsRegistry reg;
  auto p = KvEventPublisher::Start({.endpoint = "tcp://127.0.0.1:*",
                                    .queue_capacity = 2,
                                    .batch_interval = absl::Seconds(2),
                                    .metrics = &reg});
  ASSERT_TRUE(p.ok()) << p.status();
  int accepted = 0;
  for (int i = 0; i < 5; ++i) accepted += (*p)->Publish(SampleEvents()[0]) ? 1 : 0;
  EXPECT_EQ(accepted, 2);
  EXPECT_EQ((*p)->dropped(), 3u);
  EXPECT_EQ(reg.GetCounter("kvstrata_store_kv_events_dropped_total", "")->Value(), 3.0);
  EXPECT_TRUE((*p)->Flush(absl::Seconds(10)));
}

// ---- the TieredStore hooks ----

struct Recorded {
  std::vector<KvEvent> events;
  ResidencyListener listener() {
    return [this](const IndexEntry& e, const IndexEntry* parent, TierKind t, bool stored) {
      events.push_back(ResidencyEvent(e, parent, t, stored));
    };
  }
  // medium -> hashes present, replaying the events in order.
  std::map<std::string, std::set<std::string>> State() const {
    std::map<std::string, std::set<std::string>> s;
    for (const KvEvent& e : events) {
      if (e.kind == KvEventKind::kAllBlocksCleared) s.clear();
      for (const std::string& h : e.block_hashes) {
        if (e.kind == KvEventKind::kBlockStored) s[e.medium].insert(h);
        if (e.kind == KvEventKind::kBlockRemoved) {
          EXPECT_EQ(s[e.medium].erase(h), 1u) << e.medium;
        }
      }
    }
    std::erase_if(s, [](const auto& kv) { return kv.second.empty(); });
    return s;
  }
};

std::string KeyString(const BlockKey& k) {
  return std::string(reinterpret_cast<const char*>(k.bytes.data()), k.bytes.size());
}

// A page a PageStore indexes under a namespaced storage key (PageMeta::page_key) is reported
// by the key its writer named, never by the storage key (issue #18 item 3): the engine's
// view of its blocks does not depend on how the store separates namespaces.
TEST(KvEventsStore, EventsNameTheWritersKeyNotTheStorageKey) {
  std::vector<testing::TestPage> chain = MakeChain(6, "acme", 2);
  IndexEntry parent, child;
  parent.key = BlockKey{Sha256Of("storage key of block 0")};
  parent.page_key = chain[0].meta.key;
  child.key = BlockKey{Sha256Of("storage key of block 1")};
  child.parent = parent.key;
  child.page_key = chain[1].meta.key;
  child.page_parent = chain[0].meta.key;
  KvEvent ev = ResidencyEvent(child, &parent, TierKind::kHost, /*stored=*/true);
  ASSERT_EQ(ev.block_hashes.size(), 1u);
  EXPECT_EQ(ev.block_hashes[0], KeyString(chain[1].meta.key));
  EXPECT_EQ(ev.parent_block_hash, KeyString(chain[0].meta.key));
  ev = ResidencyEvent(child, nullptr, TierKind::kHost, /*stored=*/true);  // parent not given
  EXPECT_EQ(ev.parent_block_hash, KeyString(chain[0].meta.key));
  ev = ResidencyEvent(child, &parent, TierKind::kHost, /*stored=*/false);
  EXPECT_EQ(ev.block_hashes[0], KeyString(chain[1].meta.key));
}

TEST(KvEventsStore, EventsFollowPlacementEvictionAndRestart) {
  const std::string dir = testing::FreshTestDir("kv_events_store");
  std::vector<testing::TestPage> chain = MakeChain(5, "acme", 4);
  for (size_t i = 0; i < chain.size(); i += 2) chain[i].meta.engine_hash = Hash32(50 + i);
  auto hash_of = [&](size_t i) {
    return chain[i].meta.engine_hash.empty() ? KeyString(chain[i].meta.key)
                                             : chain[i].meta.engine_hash;
  };
  Recorded rec;
  {
    std::array<std::unique_ptr<Tier>, kNumTiers> tiers;
    tiers[1] = std::make_unique<MemTier>(TierKind::kHost, chain[0].bytes.size() * 2);
    auto nvme = NvmeTier::Open({.path = dir});
    ASSERT_TRUE(nvme.ok()) << nvme.status();
    tiers[2] = *std::move(nvme);
    MetricsRegistry reg;
    auto s = TieredStore::Open(
        {.metrics = &reg, .background_threads = 0, .residency_listener = rec.listener()},
        std::move(tiers));
    ASSERT_TRUE(s.ok()) << s.status();
    for (const auto& p : chain) ASSERT_TRUE((*s)->Publish(p.meta, p.bytes).ok());
    // Host holds two pages; the others were demoted to nvme.
    auto st = rec.State();
    EXPECT_EQ(st["CPU"].size(), 2u);
    EXPECT_EQ(st["DISK"].size(), 2u);
    EXPECT_TRUE(st["CPU"].contains(hash_of(3))) << "the newest page is in host";
    // Evicting host demotes the rest: removed from CPU, stored in DISK.
    ASSERT_TRUE((*s)->Evict(TierKind::kHost, 1ull << 30).ok());
    st = rec.State();
    EXPECT_EQ(st.count("CPU"), 0u);
    std::set<std::string> all;
    for (size_t i = 0; i < chain.size(); ++i) all.insert(hash_of(i));
    EXPECT_EQ(st["DISK"], all);
    // A stored event names the parent by its hash as the engine knows it.
    for (const KvEvent& e : rec.events) {
      if (e.kind == KvEventKind::kBlockStored && e.block_hashes[0] == hash_of(1)) {
        EXPECT_EQ(e.parent_block_hash, hash_of(0));
        EXPECT_EQ(e.block_size, 4u);
      }
    }
  }
  // Restart: the store starts empty in memory; recovery stores every nvme page again, with
  // the engine hashes kept in the nvme index records.
  std::set<std::string> on_disk;
  for (const auto& [m, hs] : rec.State()) {
    if (m == "DISK") on_disk = hs;
  }
  Recorded after;
  after.events.push_back({.kind = KvEventKind::kAllBlocksCleared});
  std::array<std::unique_ptr<Tier>, kNumTiers> tiers;
  auto nvme = NvmeTier::Open({.path = dir});
  ASSERT_TRUE(nvme.ok()) << nvme.status();
  tiers[2] = *std::move(nvme);
  MetricsRegistry reg;
  auto s = TieredStore::Open({.metrics = &reg, .residency_listener = after.listener()},
                             std::move(tiers));
  ASSERT_TRUE(s.ok()) << s.status();
  auto st = after.State();
  EXPECT_EQ(st.size(), 1u);
  EXPECT_EQ(st["DISK"], on_disk) << "recovered pages carry the same hashes as before";
}

}  // namespace
}  // namespace kv
