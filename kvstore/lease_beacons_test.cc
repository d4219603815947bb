// LeaseBeacons (kvstore/lease_beacons.h) on its own; page_store_test.cc checks that PageStore
// lowers a lease's beacon before its pins drop.
#include "kvstore/lease_beacons.h"

#include <gtest/gtest.h>

#include <cstring>
#include <set>

namespace kv {
namespace {

TEST(LeaseBeaconsTest, SlotCountIsChecked) {
  EXPECT_TRUE(absl::IsInvalidArgument(LeaseBeacons::Create(0).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(LeaseBeacons::Create(LeaseBeacons::kMaxSlots + 1).status()));
  auto b = LeaseBeacons::Create(3);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ((*b)->memory().size(), 3 * sizeof(uint64_t));
  EXPECT_EQ(reinterpret_cast<uintptr_t>((*b)->memory().data()) % 4096, 0u);
}

TEST(LeaseBeaconsTest, RaisedWordsHoldTheirNonceUntilLowered) {
  auto beacons = *LeaseBeacons::Create(2);
  auto a = beacons->Raise();
  auto b = beacons->Raise();
  ASSERT_TRUE(a.has_value() && b.has_value());
  EXPECT_NE(a->slot, b->slot);
  EXPECT_NE(a->nonce, 0u);
  EXPECT_NE(a->nonce, b->nonce);
  EXPECT_FALSE(beacons->Raise().has_value()) << "every slot is taken";
  EXPECT_EQ(beacons->Read(a->slot), a->nonce);
  EXPECT_EQ(beacons->Read(b->slot), b->nonce);
  // The word a reader gets through memory() is the slot's.
  uint64_t word = 0;
  std::memcpy(&word, beacons->memory().data() + LeaseBeacons::OffsetOf(b->slot), sizeof word);
  EXPECT_EQ(word, b->nonce);
  beacons->Lower(*a);
  EXPECT_EQ(beacons->Read(a->slot), 0u);
  EXPECT_EQ(beacons->raised(), 1u);
  // The slot comes back with a new nonce; a stale copy of the old beacon cannot lower it.
  auto c = beacons->Raise();
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->slot, a->slot);
  EXPECT_NE(c->nonce, a->nonce);
  beacons->Lower(*a);
  EXPECT_EQ(beacons->Read(c->slot), c->nonce);
  beacons->Lower({.slot = 99, .nonce = 1});  // out of range: ignored
  EXPECT_EQ(beacons->raised(), 2u);
}

TEST(LeaseBeaconsTest, NoncesDoNotRepeat) {
  auto beacons = *LeaseBeacons::Create(1);
  std::set<uint64_t> seen;
  for (int i = 0; i < 10000; ++i) {
    auto b = beacons->Raise();
    ASSERT_TRUE(b.has_value());
    EXPECT_TRUE(seen.insert(b->nonce).second);
    beacons->Lower(*b);
  }
}

}  // namespace
}  // namespace kv
