#include "model/safetensors.h"

#include <cstring>
#include <fstream>
#include <random>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "model/test_util.h"

namespace kv::model {
namespace {

using ::testing::HasSubstr;

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::FreshTempDir("safetensors");
    seed_ = testing::TestSeed();
  }
  std::string Path(const std::string& name) { return dir_ + "/" + name; }

  // Writes raw bytes: an 8-byte length (declared_len, or the header's real size when < 0),
  // the header text and `data`.
  std::string WriteRaw(const std::string& name, const std::string& header, const std::string& data,
                       int64_t declared_len = -1) {
    uint64_t n = declared_len < 0 ? header.size() : static_cast<uint64_t>(declared_len);
    std::string bytes(8, '\0');
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(n >> (8 * i));
    bytes += header + data;
    std::ofstream(Path(name), std::ios::binary) << bytes;
    return Path(name);
  }

  absl::Status OpenStatus(const std::string& path) { return SafetensorsFile::Open(path).status(); }

  std::string dir_;
  uint64_t seed_ = 0;
};

TEST_F(SafetensorsTest, WriteThenReadRoundTripsRandomTensors) {
  SCOPED_TRACE(::testing::Message() << "seed=" << seed_);
  std::mt19937_64 rng(seed_);
  std::vector<TensorToWrite> ts;
  const DType dtypes[] = {DType::kBF16, DType::kF32, DType::kF8E4M3};
  for (int i = 0; i < 6; ++i) {
    TensorToWrite t;
    t.name = "t" + std::to_string(i);
    t.dtype = dtypes[i % 3];
    t.shape = {static_cast<int64_t>(1 + rng() % 9), static_cast<int64_t>(1 + rng() % 13)};
    t.bytes.resize(t.shape[0] * t.shape[1] * DTypeSize(t.dtype));
    for (char& c : t.bytes) c = static_cast<char>(rng());
    ts.push_back(t);
  }
  ASSERT_TRUE(WriteSafetensors(Path("a.safetensors"), ts, {{"k", "v"}}).ok());
  auto f = SafetensorsFile::Open(Path("a.safetensors"));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->metadata().at("k"), "v");
  EXPECT_EQ((*f)->tensors().size(), ts.size());
  for (const auto& t : ts) {
    const TensorInfo* info = (*f)->Find(t.name);
    ASSERT_NE(info, nullptr);
    EXPECT_EQ(info->dtype, t.dtype);
    EXPECT_EQ(info->shape, t.shape);
    auto b = (*f)->Bytes(*info);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(b.data()), b.size()), t.bytes);
  }
  EXPECT_EQ((*f)->Find("missing"), nullptr);
  EXPECT_EQ((*f)->header_json().size() % 8, 0u);
}

TEST_F(SafetensorsTest, WriterRefusesBadTensors) {
  EXPECT_FALSE(
      WriteSafetensors(Path("b"), {{"x", DType::kF32, {2}, std::string(7, 'a')}}, {}).ok());
  EXPECT_FALSE(WriteSafetensors(Path("b"),
                                {{"x", DType::kF32, {1}, std::string(4, 'a')},
                                 {"x", DType::kF32, {1}, std::string(4, 'a')}},
                                {})
                   .ok());
}

TEST_F(SafetensorsTest, MalformedFilesGetClearErrors) {
  const std::string ok_header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                R"("b":{"dtype":"BF16","shape":[2,2],"data_offsets":[8,16]}})";
  const std::string data(16, 'x');
  ASSERT_TRUE(OpenStatus(WriteRaw("ok", ok_header, data)).ok());

  struct Case {
    std::string name, header, data;
    int64_t declared;
    std::string want;
  };
  const Case cases[] = {
      {"short", "", "", -2, "shorter than the 8-byte"},
      {"len-past-end", ok_header, data, 1 << 20, "exceeds"},
      {"truncated-data", ok_header, data.substr(0, 12), -1, "beyond the data section"},
      {"not-json", "{\"a\":", data, -1, "not a JSON object"},
      {"not-object", "[1,2,3]", data, -1, "not a JSON object"},
      {"bad-dtype", R"({"a":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}})", data, -1, "F64"},
      {"wrong-size", R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", data, -1,
       "needs 12"},
      {"backwards", R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[16,0]}})", data, -1,
       "backwards"},
      {"overlap",
       R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
       R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
       data, -1, "overlap"},
      {"gap",
       R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
       R"("b":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}})",
       data, -1, "belong to no tensor"},
      {"trailing", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", data, -1,
       "belong to no tensor"},
      {"neg-shape", R"({"a":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})", data, -1,
       "shape"},
      {"huge-shape",
       R"({"a":{"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,16]}})", data, -1,
       "overflow"},
      {"no-offsets", R"({"a":{"dtype":"F32","shape":[4]}})", data, -1, "data_offsets"},
      {"bad-metadata", R"({"__metadata__":{"k":1}})", "", -1, "__metadata__"},
  };
  for (const Case& c : cases) {
    std::string path;
    if (c.declared == -2) {
      std::ofstream(Path(c.name), std::ios::binary) << "abc";
      path = Path(c.name);
    } else {
      path = WriteRaw(c.name, c.header, c.data, c.declared);
    }
    absl::Status s = OpenStatus(path);
    EXPECT_FALSE(s.ok()) << c.name;
    EXPECT_THAT(s.message(), HasSubstr(c.want)) << c.name << ": " << s;
    EXPECT_THAT(s.message(), HasSubstr(c.name)) << "error should name the file";
  }
  EXPECT_EQ(OpenStatus(Path("does-not-exist")).code(), absl::StatusCode::kNotFound);
}

TEST_F(SafetensorsTest, RandomCorruptionNeverCrashes) {
  SCOPED_TRACE(::testing::Message() << "seed=" << seed_);
  std::mt19937_64 rng(seed_);
  std::vector<TensorToWrite> ts = {{"w", DType::kBF16, {4, 4}, std::string(32, 'q')},
                                   {"v", DType::kF32, {3}, std::string(12, 'r')}};
  ASSERT_TRUE(WriteSafetensors(Path("base"), ts, {}).ok());
  std::ifstream in(Path("base"), std::ios::binary);
  std::string base((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  int refused = 0;
  for (int iter = 0; iter < 300; ++iter) {
    std::string b = base;
    if (iter % 3 == 0) {
      b.resize(rng() % b.size());  // truncation
    } else {
      for (int k = 0; k < 3; ++k)
        b[rng() % std::min<size_t>(b.size(), 160)] = static_cast<char>(rng());
    }
    std::ofstream(Path("fuzz"), std::ios::binary | std::ios::trunc) << b;
    auto f = SafetensorsFile::Open(Path("fuzz"));
    if (!f.ok()) {
      ++refused;
      continue;
    }
    // Whatever was accepted must be internally consistent.
    for (const auto& t : (*f)->tensors()) {
      EXPECT_LE(t.end, (*f)->data_section().size());
      EXPECT_EQ(t.end - t.begin, t.numel() * DTypeSize(t.dtype));
    }
  }
  EXPECT_GT(refused, 100);
}

}  // namespace
}  // namespace kv::model
