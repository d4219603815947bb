#include "core/hash.h"

#include <openssl/evp.h>
#include <openssl/sha.h>

#include <cstring>

#define XXH_INLINE_ALL
#include <xxhash.h>

// libxxhash's runtime-dispatched XXH3 (xxh_x86dispatch.c, built into the shared library on
// x86-64): the AVX2 / AVX-512 kernel where the CPU has it. The inlined copy above is built for
// the baseline ISA (SSE2). XXH3's value does not depend on the kernel.
#if defined(__x86_64__)
extern "C" XXH64_hash_t XXH3_64bits_withSeed_dispatch(const void* input, size_t len,
                                                      XXH64_hash_t seed);
#define KV_XXH3_DISPATCH 1
#endif

namespace kv {

// SHA256_CTX (the low-level API) is deprecated in OpenSSL 3 for new algorithms, but EVP
// contexts cannot be copied without an allocation per copy, and block-key derivation forks a
// midstate per block. EVP_MD_CTX_copy_ex into a preallocated context avoids that, so we use
// EVP and keep one context per hasher.
struct Sha256::State {
  EVP_MD_CTX* ctx = nullptr;
  State() : ctx(EVP_MD_CTX_new()) { EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr); }
  ~State() { EVP_MD_CTX_free(ctx); }
};

Sha256::Sha256() : state_(std::make_unique<State>()) {}
Sha256::~Sha256() = default;
Sha256::Sha256(const Sha256& other) : state_(std::make_unique<State>()) {
  EVP_MD_CTX_copy_ex(state_->ctx, other.state_->ctx);
}
Sha256& Sha256::operator=(const Sha256& other) {
  if (this != &other) EVP_MD_CTX_copy_ex(state_->ctx, other.state_->ctx);
  return *this;
}
Sha256::Sha256(Sha256&&) noexcept = default;
Sha256& Sha256::operator=(Sha256&&) noexcept = default;

void Sha256::Update(const void* data, size_t len) { EVP_DigestUpdate(state_->ctx, data, len); }

Digest256 Sha256::Final() {
  Digest256 out;
  unsigned int n = 0;
  EVP_DigestFinal_ex(state_->ctx, out.data(), &n);
  return out;
}

Digest256 Sha256Of(const void* data, size_t len) {
  Digest256 out;
  SHA256(static_cast<const unsigned char*>(data), len, out.data());
  return out;
}

uint64_t Xxh3_64(const void* data, size_t len, uint64_t seed) {
#ifdef KV_XXH3_DISPATCH
  // Long inputs (page sections) through the vector kernel; short ones (keys, headers) stay
  // inline, where a call through the dispatcher would cost more than it saves.
  if (len >= 4096) return XXH3_64bits_withSeed_dispatch(data, len, seed);
#endif
  return XXH3_64bits_withSeed(data, len, seed);
}

std::string ToHex(const void* data, size_t len) {
  static constexpr char kDigits[] = "0123456789abcdef";
  const auto* p = static_cast<const uint8_t*>(data);
  std::string out(len * 2, '0');
  for (size_t i = 0; i < len; ++i) {
    out[2 * i] = kDigits[p[i] >> 4];
    out[2 * i + 1] = kDigits[p[i] & 15];
  }
  return out;
}

bool FromHex(std::string_view hex, std::string* out) {
  if (hex.size() % 2 != 0) return false;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string bytes(hex.size() / 2, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) {
    int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    bytes[i] = static_cast<char>((hi << 4) | lo);
  }
  *out = std::move(bytes);
  return true;
}

}  // namespace kv
