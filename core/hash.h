// Hash functions used for identity and integrity.
//
// - SHA-256 (OpenSSL EVP) is the identity hash: block keys and model fingerprints. It is
//   cryptographic so that a tenant cannot forge a collision with another tenant's block.
// - XXH3-64 (xxhash) is the integrity hash: page section and header checksums. It is fast
//   (tens of GB/s) and catches corruption, not adversaries; identity never rests on it.
//
// Sha256 is a streaming hasher. It is not safe for concurrent use; copy it to fork a
// midstate (copying costs an allocation).
// The free functions are thread-safe. (Block-key derivation, the hottest SHA-256 user, forks
// OpenSSL's SHA256_CTX directly: copying an EVP context allocates on every copy.)
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace kv {

using Digest256 = std::array<uint8_t, 32>;

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256& other);
  Sha256& operator=(const Sha256& other);
  Sha256(Sha256&&) noexcept;
  Sha256& operator=(Sha256&&) noexcept;

  void Update(const void* data, size_t len);
  void Update(std::string_view s) { Update(s.data(), s.size()); }
  // Finishes the hash. The hasher must not be updated afterwards.
  Digest256 Final();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

Digest256 Sha256Of(const void* data, size_t len);
inline Digest256 Sha256Of(std::string_view s) { return Sha256Of(s.data(), s.size()); }

uint64_t Xxh3_64(const void* data, size_t len, uint64_t seed = 0);

// Lower-case hex of `len` bytes.
std::string ToHex(const void* data, size_t len);
inline std::string ToHex(const Digest256& d) { return ToHex(d.data(), d.size()); }
// Parses hex (either case). Returns false on odd length or a non-hex character; `out` is
// then left unchanged.
bool FromHex(std::string_view hex, std::string* out);

}  // namespace kv
