#include "kvstore/engine_block_hash.h"

// OpenSSL's low-level SHA256_CTX, like block_key.cc: no EVP context to allocate or fetch per
// block. Deprecated in OpenSSL 3 but present; the vectors pin the output.
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>

#include <cstring>

#include "absl/status/status.h"
#include "core/status_macros.h"
#include "core/strings.h"

namespace kv {
namespace {

// CBOR major types (RFC 8949 §3.1).
constexpr uint8_t kMajorUint = 0;
constexpr uint8_t kMajorNegInt = 1;
constexpr uint8_t kMajorBytes = 2;
constexpr uint8_t kMajorText = 3;
constexpr uint8_t kMajorArray = 4;
constexpr uint8_t kCborNull = 0xf6;

// A head with the shortest argument encoding (canonical / preferred serialization): values
// below 24 in the initial byte, then 1, 2, 4 or 8 big-endian bytes.
void AppendHead(std::string* out, uint8_t major, uint64_t v) {
  const uint8_t m = static_cast<uint8_t>(major << 5);
  if (v < 24) {
    out->push_back(static_cast<char>(m | v));
    return;
  }
  int bytes = 8;
  uint8_t info = 27;
  if (v <= 0xff) {
    bytes = 1, info = 24;
  } else if (v <= 0xffff) {
    bytes = 2, info = 25;
  } else if (v <= 0xffffffffu) {
    bytes = 4, info = 26;
  }
  out->push_back(static_cast<char>(m | info));
  for (int i = bytes - 1; i >= 0; --i) out->push_back(static_cast<char>(v >> (8 * i)));
}

void AppendInt(std::string* out, int64_t v) {
  if (v >= 0) {
    AppendHead(out, kMajorUint, static_cast<uint64_t>(v));
  } else {
    // Major type 1 encodes -1 - n; computed without overflow for INT64_MIN.
    AppendHead(out, kMajorNegInt, static_cast<uint64_t>(-(v + 1)));
  }
}

void AppendBytes(std::string* out, const void* data, size_t len) {
  AppendHead(out, kMajorBytes, len);
  out->append(static_cast<const char*>(data), len);
}

void AppendText(std::string* out, std::string_view s) {
  AppendHead(out, kMajorText, s.size());
  out->append(s);
}

// Strict UTF-8 (no overlongs, no surrogates, at most U+10FFFF): what a Python str encodes to.
bool ValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const uint8_t c = static_cast<uint8_t>(s[i]);
    int n = 0;
    uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if (c >= 0xc2 && c <= 0xdf) {
      n = 1, cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
      n = 2, cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      n = 3, cp = c & 0x07;
    } else {
      return false;
    }
    if (i + n >= s.size()) return false;  // truncated sequence
    for (int k = 1; k <= n; ++k) {
      const uint8_t cc = static_cast<uint8_t>(s[i + k]);
      if ((cc & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10ffff ||
        (cp >= 0xd800 && cp <= 0xdfff)) {
      return false;
    }
    i += n + 1;
  }
  return true;
}

absl::Status CheckText(std::string_view what, std::string_view s) {
  if (ValidUtf8(s)) return absl::OkStatus();
  return absl::InvalidArgumentError(kv::StrCat("engine block hash: ", what, " is not valid UTF-8"));
}

absl::Status CheckExtras(const EngineHashExtras& x, size_t blocks) {
  if (x.lora_name) RETURN_IF_ERROR(CheckText("lora name", *x.lora_name));
  RETURN_IF_ERROR(CheckText("cache_salt", x.cache_salt));
  int64_t end = 0;
  for (size_t i = 0; i < x.mm_items.size(); ++i) {
    const EngineMmItem& m = x.mm_items[i];
    RETURN_IF_ERROR(CheckText(kv::StrCat("multimodal item ", i, " identifier"), m.identifier));
    if (m.offset < end || m.length < 1 || m.length > INT64_MAX - m.offset) {
      return absl::InvalidArgumentError(kv::StrCat(
          "engine block hash: multimodal item ", i, " range [", m.offset, ", +", m.length,
          ") must be non-empty, sorted and not overlap the previous one (ends at ", end, ")"));
    }
    end = m.offset + m.length;
  }
  if (!x.prompt_embed_hashes.empty() && x.prompt_embed_hashes.size() != blocks) {
    return absl::InvalidArgumentError(
        kv::StrCat("engine block hash: ", x.prompt_embed_hashes.size(),
                   " prompt-embedding hashes for ", blocks, " full blocks"));
  }
  return absl::OkStatus();
}

absl::Status CheckParams(const EngineHashParams& p, std::span<const int64_t> tokens) {
  RETURN_IF_ERROR(CheckText("seed", p.seed));
  if (p.block_size == 0 || p.block_size > (1u << 16)) {
    return absl::InvalidArgumentError(
        kv::StrCat("engine block hash: block_size must be 1..65536, got ", p.block_size));
  }
  if (p.start_token < 0 || p.start_token % p.block_size != 0) {
    return absl::InvalidArgumentError(kv::StrCat("engine block hash: start_token ", p.start_token,
                                                 " must be a non-negative multiple of block_size ",
                                                 p.block_size));
  }
  if (p.start_token > 0 && !p.parent) {
    return absl::InvalidArgumentError(kv::StrCat("engine block hash: start_token ", p.start_token,
                                                 " > 0 needs the parent block's hash"));
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0) {
      return absl::InvalidArgumentError(kv::StrCat("engine block hash: token id at index ", i,
                                                   " is ", tokens[i], "; ids must be >= 0"));
    }
  }
  return absl::OkStatus();
}

// Appends the multimodal extra keys of block [start, end) following vLLM's scan: `curr` is
// the first item not yet wholly before an earlier block, carried from block to block.
void AppendMmKeys(const std::vector<EngineMmItem>& items, int64_t start, int64_t end, size_t* curr,
                  std::vector<std::pair<const EngineMmItem*, int64_t>>* out) {
  while (*curr < items.size()) {
    const EngineMmItem& m = items[*curr];
    if (end <= m.offset) break;  // the block has not reached this item
    if (start >= m.offset + m.length) {
      ++*curr;  // the block is past this item
      continue;
    }
    out->emplace_back(&m, m.offset - start);
    if (end >= m.offset + m.length) {
      ++*curr;  // the item ends in this block; the next may start in it too
    } else {
      break;  // the item runs on past this block
    }
  }
}

// Encodes block `b`'s extra keys (CBOR null when there are none). `mm_curr` carries the
// multimodal scan position between consecutive blocks.
void AppendExtraKeys(const EngineHashParams& p, const EngineHashExtras& x, size_t b,
                     size_t* mm_curr, std::string* out) {
  const int64_t start = p.start_token + static_cast<int64_t>(b) * p.block_size;
  const int64_t end = start + p.block_size;
  std::vector<std::pair<const EngineMmItem*, int64_t>> mm;
  AppendMmKeys(x.mm_items, start, end, mm_curr, &mm);
  const bool salt = start == 0 && !x.cache_salt.empty();
  const size_t n =
      (x.lora_name ? 1 : 0) + mm.size() + (salt ? 1 : 0) + (x.prompt_embed_hashes.empty() ? 0 : 1);
  if (n == 0) {
    out->push_back(static_cast<char>(kCborNull));
    return;
  }
  AppendHead(out, kMajorArray, n);
  if (x.lora_name) AppendText(out, *x.lora_name);
  for (const auto& [item, rel] : mm) {
    AppendHead(out, kMajorArray, 2);
    AppendText(out, item->identifier);
    AppendInt(out, rel);
  }
  if (salt) AppendText(out, x.cache_salt);
  if (!x.prompt_embed_hashes.empty()) AppendBytes(out, x.prompt_embed_hashes[b].data(), 32);
}

// [parent, tokens, extra_keys] of block `b` into `out` (cleared first).
void EncodeBlock(const EngineHashParams& p, std::span<const int64_t> tokens,
                 const EngineHashExtras& x, size_t b, const Digest256& parent, size_t* mm_curr,
                 std::string* out) {
  out->clear();
  AppendHead(out, kMajorArray, 3);
  AppendBytes(out, parent.data(), parent.size());
  AppendHead(out, kMajorArray, p.block_size);
  for (int64_t t : tokens.subspan(b * p.block_size, p.block_size)) {
    AppendHead(out, kMajorUint, static_cast<uint64_t>(t));
  }
  AppendExtraKeys(p, x, b, mm_curr, out);
}

Digest256 Sha256Bytes(const std::string& s) {
  // SHA256_Init/Update/Final on a stack context: OpenSSL 3's one-shot SHA256() goes through
  // EVP and fetches the algorithm on every call, which cost about half the time per block.
  Digest256 d;
  SHA256_CTX ctx;
  SHA256_Init(&ctx);
  SHA256_Update(&ctx, s.data(), s.size());
  SHA256_Final(d.data(), &ctx);
  return d;
}

absl::StatusOr<Digest256> FirstParent(const EngineHashParams& p) {
  if (p.parent) return *p.parent;
  return EngineNoneHash(p.seed);
}

}  // namespace

absl::StatusOr<Digest256> EngineNoneHash(std::string_view seed) {
  RETURN_IF_ERROR(CheckText("seed", seed));
  std::string buf;
  AppendText(&buf, seed);
  return Sha256Bytes(buf);
}

absl::StatusOr<std::vector<Digest256>> EngineBlockHashes(const EngineHashParams& params,
                                                         std::span<const int64_t> tokens,
                                                         const EngineHashExtras& extras) {
  RETURN_IF_ERROR(CheckParams(params, tokens));
  const size_t blocks = tokens.size() / params.block_size;
  RETURN_IF_ERROR(CheckExtras(extras, blocks));
  ASSIGN_OR_RETURN(Digest256 prev, FirstParent(params));
  std::vector<Digest256> out;
  out.reserve(blocks);
  std::string buf;
  buf.reserve(64 + 9 * size_t{params.block_size});
  size_t mm_curr = 0;
  for (size_t b = 0; b < blocks; ++b) {
    EncodeBlock(params, tokens, extras, b, prev, &mm_curr, &buf);
    prev = Sha256Bytes(buf);
    out.push_back(prev);
  }
  return out;
}

absl::StatusOr<std::string> EngineBlockPreimage(const EngineHashParams& params,
                                                std::span<const int64_t> tokens,
                                                const EngineHashExtras& extras,
                                                size_t block_index) {
  ASSIGN_OR_RETURN(std::vector<Digest256> hashes, EngineBlockHashes(params, tokens, extras));
  if (block_index >= hashes.size()) {
    return absl::OutOfRangeError(kv::StrCat("engine block hash: block ", block_index,
                                            " is not one of the ", hashes.size(), " full blocks"));
  }
  ASSIGN_OR_RETURN(Digest256 parent, FirstParent(params));
  // Replays the multimodal scan up to the block so its carried position is exact.
  size_t mm_curr = 0;
  std::string buf;
  for (size_t b = 0; b <= block_index; ++b) {
    EncodeBlock(params, tokens, extras, b, b == 0 ? parent : hashes[b - 1], &mm_curr, &buf);
  }
  return buf;
}

}  // namespace kv
