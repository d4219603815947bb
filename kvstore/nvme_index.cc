#include "kvstore/nvme_index.h"

#include <cstring>

#include "core/strings.h"

namespace kv {
namespace {

// Version 2 added the page's own key and parent (PageMeta::page_key, page_parent): records
// are keyed by the store's key, which since version 2 may be a namespaced storage key.
constexpr uint8_t kIndexVersion = 2;
constexpr size_t kFixedBytes = 1 + 1 + 6 * 8 + 3 * 32;

void PutU64(std::string* s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s->push_back(static_cast<char>(v >> (8 * i)));
}
uint64_t GetU64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(static_cast<uint8_t>(p[i])) << (8 * i);
  return v;
}

}  // namespace

std::string EncodeIndexRecord(const IndexRecord& r) {
  std::string s;
  s.reserve(kFixedBytes + 16 + r.meta.ns.size() + r.meta.layout.size());
  s.push_back(static_cast<char>(kIndexVersion));
  s.push_back(static_cast<char>(r.meta.resume_role));
  PutU64(&s, r.ref.segment);
  PutU64(&s, r.ref.offset);
  PutU64(&s, r.meta.size);
  PutU64(&s, r.ref.payload_xxh3);
  PutU64(&s, static_cast<uint64_t>(absl::ToUnixMicros(r.meta.last_access)));
  PutU64(&s, r.meta.resume_bytes);
  for (const BlockKey* k : {&r.meta.parent, &r.meta.page_key, &r.meta.page_parent}) {
    s.append(reinterpret_cast<const char*>(k->bytes.data()), k->bytes.size());
  }
  for (const std::string* f : {&r.meta.ns, &r.meta.layout}) {
    PutU64(&s, f->size());
    s.append(*f);
  }
  // Optional trailing field (records written before it end after the layout).
  if (!r.meta.engine_hash.empty()) {
    PutU64(&s, r.meta.engine_hash.size());
    s.append(r.meta.engine_hash);
  }
  return s;
}

absl::StatusOr<IndexRecord> DecodeIndexRecord(const BlockKey& key, std::string_view b) {
  auto bad = [&](std::string_view why) {
    return absl::DataLossError(StrCat("nvme index record of ", key.Hex(), ": ", why));
  };
  if (!b.empty() && static_cast<uint8_t>(b[0]) == 1) {
    return bad(
        "version 1 record, written before pages were keyed by namespace (issue #18); "
        "skipped (the page is a miss until written again)");
  }
  if (b.size() < kFixedBytes) return bad("truncated");
  if (static_cast<uint8_t>(b[0]) != kIndexVersion) {
    return bad(StrCat("unknown version ", static_cast<int>(static_cast<uint8_t>(b[0]))));
  }
  const uint8_t role = static_cast<uint8_t>(b[1]);
  if (role > static_cast<uint8_t>(PageRole::kCheckpoint)) return bad("bad resume role");
  IndexRecord r;
  r.meta.key = key;
  r.meta.sealed = true;
  r.meta.resume_role = static_cast<PageRole>(role);
  const char* p = b.data() + 2;
  r.ref.segment = GetU64(p);
  r.ref.offset = GetU64(p + 8);
  r.meta.size = GetU64(p + 16);
  r.ref.payload_xxh3 = GetU64(p + 24);
  r.meta.last_access = absl::FromUnixMicros(static_cast<int64_t>(GetU64(p + 32)));
  r.meta.resume_bytes = GetU64(p + 40);
  std::memcpy(r.meta.parent.bytes.data(), p + 48, 32);
  std::memcpy(r.meta.page_key.bytes.data(), p + 80, 32);
  std::memcpy(r.meta.page_parent.bytes.data(), p + 112, 32);
  size_t pos = kFixedBytes;
  for (std::string* f : {&r.meta.ns, &r.meta.layout}) {
    if (b.size() - pos < 8) return bad("truncated");
    uint64_t n = GetU64(b.data() + pos);
    pos += 8;
    if (n > b.size() - pos) return bad("field length past the end");
    f->assign(b.data() + pos, n);
    pos += n;
  }
  if (pos < b.size()) {  // the optional engine hash
    if (b.size() - pos < 8) return bad("truncated engine hash");
    uint64_t n = GetU64(b.data() + pos);
    pos += 8;
    if (n == 0 || n > b.size() - pos) return bad("bad engine hash length");
    r.meta.engine_hash.assign(b.data() + pos, n);
    pos += n;
  }
  if (pos != b.size()) return bad("trailing bytes");
  if (r.ref.offset % 4096 != 0 || r.meta.size == 0) return bad("bad record offset or size");
  return r;
}

}  // namespace kv
