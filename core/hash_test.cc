#include "core/hash.h"

#include <string>

#include <gtest/gtest.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace kv {
namespace {

// FIPS 180-2 test vectors.
TEST(Hash, Sha256KnownAnswers) {
  EXPECT_EQ(ToHex(Sha256Of("")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(ToHex(Sha256Of("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  std::string million(1000000, 'a');
  EXPECT_EQ(ToHex(Sha256Of(million)),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Hash, Sha256StreamingAndMidstateCopy) {
  Sha256 prefix;
  prefix.Update("ab");
  Sha256 fork = prefix;  // copy the midstate
  prefix.Update("c");
  fork.Update("c");
  const Digest256 a = prefix.Final();
  const Digest256 b = fork.Final();
  EXPECT_EQ(a, b);
  EXPECT_EQ(a, Sha256Of("abc"));
  Sha256 assigned;
  assigned.Update("zzz");
  Sha256 base;
  base.Update("a");
  assigned = base;  // assignment replaces the state
  assigned.Update("bc");
  EXPECT_EQ(assigned.Final(), Sha256Of("abc"));
}

TEST(Hash, Xxh3) {
  // XXH3-64 of the empty input with seed 0 (xxhash's documented value).
  EXPECT_EQ(Xxh3_64("", 0), 0x2D06800538D394C2ULL);
  const std::string s = "kvstrata";
  EXPECT_NE(Xxh3_64(s.data(), s.size()), Xxh3_64(s.data(), s.size(), 1));
  std::string t = s;
  t[3] ^= 1;
  EXPECT_NE(Xxh3_64(s.data(), s.size()), Xxh3_64(t.data(), t.size()));
}

// Long inputs go through libxxhash's dispatched vector kernel: the same values as the
// inlined baseline build, at the switch-over length and beyond, with and without a seed.
TEST(Hash, Xxh3DispatchedEqualsInline) {
  std::string data(1 << 20, '\0');
  uint64_t x = 0x9E3779B97F4A7C15ull;
  for (char& c : data) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    c = static_cast<char>(x);
  }
  for (size_t len : {4095u, 4096u, 4097u, 37440u, 100001u, 1u << 20}) {
    for (uint64_t seed : {0ull, 7ull}) {
      EXPECT_EQ(Xxh3_64(data.data(), len, seed), XXH3_64bits_withSeed(data.data(), len, seed))
          << "len " << len << " seed " << seed;
    }
  }
}

TEST(Hash, HexRoundTrip) {
  std::string bytes = {'\x00', '\x7f', '\xff', '\x10'};
  EXPECT_EQ(ToHex(bytes.data(), bytes.size()), "007fff10");
  std::string out = "unchanged";
  EXPECT_TRUE(FromHex("007FfF10", &out));
  EXPECT_EQ(out, bytes);
  out = "unchanged";
  EXPECT_FALSE(FromHex("abc", &out));
  EXPECT_FALSE(FromHex("zz", &out));
  EXPECT_EQ(out, "unchanged");
}

}  // namespace
}  // namespace kv
