#include "model/tokenizer.h"

#include <random>

#include <gtest/gtest.h>

#include "model/test_util.h"

namespace kv::model {
namespace {

TEST(TokenizerTest, RandomBytesRoundTrip) {
  const uint64_t seed = testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed=" << seed);
  std::mt19937_64 rng(seed);
  std::string text(1000, '\0');
  for (char& c : text) c = static_cast<char>(rng());
  auto ids = ByteTokenizer::Encode(text, /*add_bos=*/true, /*parse_specials=*/false);
  ASSERT_EQ(ids.size(), text.size() + 1);
  EXPECT_EQ(ids[0], ByteTokenizer::kBos);
  auto back = ByteTokenizer::Decode(ids, /*render_specials=*/false);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, text);
}

TEST(TokenizerTest, SpecialsParseAndRender) {
  const std::string chat = "<|user|>hi<|eot|><|assistant|>";
  auto ids = ByteTokenizer::Encode(chat, false, true);
  std::vector<int32_t> want = {ByteTokenizer::kUser, 'h', 'i', ByteTokenizer::kEndOfTurn,
                               ByteTokenizer::kAssistant};
  EXPECT_EQ(ids, want);
  EXPECT_EQ(*ByteTokenizer::Decode(ids, true), chat);
  EXPECT_EQ(*ByteTokenizer::Decode(ids, false), "hi");
  // Without parse_specials the marker is plain bytes.
  EXPECT_EQ(ByteTokenizer::Encode(chat, false, false).size(), chat.size());
  EXPECT_EQ(ByteTokenizer::Encode("<|nope|>", false, true).size(), 8u);
}

TEST(TokenizerTest, OutOfRangeIdIsAnError) {
  auto s = ByteTokenizer::Decode({65, ByteTokenizer::kVocabSize}, false);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(ByteTokenizer::Decode({-1}, false).ok());
  EXPECT_EQ(ByteTokenizer::SpecialName(65), "");
  EXPECT_EQ(ByteTokenizer::SpecialName(ByteTokenizer::kEos), "<|eos|>");
}

TEST(TokenizerTest, ShowEscapesLikeTheCli) {
  EXPECT_EQ(ByteTokenizer::Show('a', false), "a");
  EXPECT_EQ(ByteTokenizer::Show('\n', false), "\n");
  EXPECT_EQ(ByteTokenizer::Show(0xc9, false), "\\xc9");
  EXPECT_EQ(ByteTokenizer::Show(0x07, false), "\\x07");
  EXPECT_EQ(ByteTokenizer::Show(0xc9, true), std::string(1, '\xc9'));
  EXPECT_EQ(ByteTokenizer::Show(ByteTokenizer::kUser, false), "<|user|>");
  EXPECT_EQ(ByteTokenizer::Show(ByteTokenizer::kUser, true), "<|user|>");
  EXPECT_EQ(ByteTokenizer::Show(ByteTokenizer::kVocabSize, false), "<|id 267|>");
  EXPECT_EQ(ByteTokenizer::Show(-1, true), "<|id -1|>");
}

}  // namespace
}  // namespace kv::model
