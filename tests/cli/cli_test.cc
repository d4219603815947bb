// Runs the built `kvstrata` binary: `keys` reproduces the checked-in block-key vectors,
// `inspect` verifies good pages and names the corrupted part of bad ones, and
// `conversation` writes pages that inspect cleanly with the expected prefix reuse.
//
// Usage (from ctest): cli_test PATH_TO_KVSTRATA SOURCE_ROOT [gtest flags]
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvstore/page_format.h"
#include "nlohmann/json.hpp"

namespace kv {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

std::string g_binary;
std::string g_root;

struct Result {
  int code = -1;
  std::string out;  // stdout and stderr together
};

std::string Quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

Result RunKvstrata(const std::vector<std::string>& args) {
  std::string cmd = Quote(g_binary);
  for (const auto& a : args) cmd += " " + Quote(a);
  cmd += " 2>&1";
  Result r;
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) r.out.append(buf, n);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteBytes(const std::string& path, const std::vector<uint8_t>& b) {
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), b.size());
}

std::string TempDir(const std::string& name) {
  const char* base = std::getenv("KVSTRATA_TEST_TMPDIR");
  std::string tmpl = std::string(base ? base : "/tmp") + "/" + name + ".XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  const char* d = mkdtemp(buf.data());
  EXPECT_NE(d, nullptr) << "mkdtemp " << tmpl;
  return d ? std::string(d) : std::string("/tmp");
}

std::string VectorsPath() { return g_root + "/kvstore/testdata/block_key_vectors.json"; }

std::vector<std::string> KeysArgs(const nlohmann::json& v) {
  std::string tokens;
  for (const auto& t : v["tokens"]) {
    tokens += (tokens.empty() ? "" : ",") + std::to_string(t.get<uint64_t>());
  }
  std::vector<std::string> a = {"keys",
                                "--model-fingerprint=" + v["model_fingerprint"].get<std::string>(),
                                "--layout=" + v["layout"].get<std::string>(),
                                "--page-tokens=" + std::to_string(v["page_tokens"].get<int>()),
                                "--namespace=" + v["namespace"].get<std::string>(),
                                "--tokens=" + tokens};
  if (!v["parent"].is_null()) a.push_back("--parent=" + v["parent"].get<std::string>());
  return a;
}

// Issue #18 item 8: every command's --help prints its usage line once, and exits 0.
TEST(HelpCli, EveryCommandPrintsItsUsageOnce) {
  for (const char* cmd : {"serve", "demo", "generate", "keys", "conversation", "inspect"}) {
    const Result r = RunKvstrata({cmd, "--help"});
    EXPECT_EQ(r.code, 0) << cmd << ": " << r.out;
    size_t count = 0;
    for (size_t at = r.out.find("usage:"); at != std::string::npos;
         at = r.out.find("usage:", at + 1)) {
      ++count;
    }
    EXPECT_EQ(count, 1u) << cmd << ":\n" << r.out;
  }
}

// Issue #18 item 8: --check-config refuses what would fail at start, and warns about a node
// open to every interface without client credentials.
TEST(ServeCli, CheckConfigRefusesABadMemberTtlAndWarnsOnAnOpenListener) {
  const std::string dir = TempDir("check-config");
  for (const char* ttl : {"0s", "500ms", "-3s"}) {
    const Result r =
        RunKvstrata({"serve", "--check-config", "--role=router", "--etcd=127.0.0.1:2379",
                     std::string("--member-ttl=") + ttl, "--data-dir=" + dir});
    EXPECT_EQ(r.code, 1) << ttl << ": " << r.out;
    EXPECT_NE(r.out.find("member-ttl"), std::string::npos) << r.out;
  }
  for (const char* role : {"all", "store"}) {
    Result r = RunKvstrata({"serve", "--check-config", std::string("--role=") + role,
                            "--listen=0.0.0.0:7070", "--data-dir=" + dir});
    EXPECT_EQ(r.code, 0) << role << ": " << r.out;
    EXPECT_NE(r.out.find("warning: "), std::string::npos) << role << ": " << r.out;
    EXPECT_NE(r.out.find("--tokens-file"), std::string::npos) << r.out;
    r = RunKvstrata({"serve", "--check-config", std::string("--role=") + role,
                     "--listen=127.0.0.1:7070", "--data-dir=" + dir});
    EXPECT_EQ(r.code, 0) << r.out;
    EXPECT_EQ(r.out.find("warning: "), std::string::npos) << r.out;
  }
  std::filesystem::remove_all(dir);
}

TEST(KeysCli, ReproducesCheckedInVectors) {
  nlohmann::json doc = nlohmann::json::parse(ReadText(VectorsPath()));
  ASSERT_GE(doc["vectors"].size(), 9u);
  for (const auto& v : doc["vectors"]) {
    SCOPED_TRACE(v["name"].get<std::string>());
    std::vector<std::string> args = KeysArgs(v);
    Result text = RunKvstrata(args);
    ASSERT_EQ(text.code, 0) << text.out;
    std::string want;
    for (const auto& k : v["keys"]) want += k.get<std::string>() + "\n";
    EXPECT_EQ(text.out, want);
    args.push_back("--json");
    Result json = RunKvstrata(args);
    ASSERT_EQ(json.code, 0) << json.out;
    nlohmann::json j = nlohmann::json::parse(json.out);
    EXPECT_EQ(j["keys"], v["keys"]);
    EXPECT_EQ(j["full_blocks"].get<size_t>(), v["keys"].size());
  }
}

TEST(KeysCli, VectorsFlagPassesAndCatchesAWrongKey) {
  Result ok = RunKvstrata({"keys", "--vectors=" + VectorsPath()});
  EXPECT_EQ(ok.code, 0) << ok.out;
  EXPECT_THAT(ok.out, HasSubstr(" 0 failed"));
  nlohmann::json doc = nlohmann::json::parse(ReadText(VectorsPath()));
  std::string k = doc["vectors"][1]["keys"][2];
  k[10] = k[10] == '0' ? '1' : '0';
  doc["vectors"][1]["keys"][2] = k;
  const std::string bad = TempDir("keys_cli") + "/bad_vectors.json";
  std::ofstream(bad) << doc.dump();
  Result r = RunKvstrata({"keys", "--vectors=" + bad});
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_THAT(r.out, HasSubstr("FAIL " + doc["vectors"][1]["name"].get<std::string>()));
  EXPECT_THAT(r.out, HasSubstr(" 1 failed"));
}

TEST(KeysCli, BadInputIsAClearError) {
  const std::string fp = "--model-fingerprint=" + std::string(64, 'a');
  Result r = RunKvstrata({"keys", fp, "--namespace=acme", "--tokens=1,-1"});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.out, HasSubstr("token id at index 1 is -1"));
  r = RunKvstrata({"keys", fp, "--namespace=acme", "--tokens=1,4294967296"});
  EXPECT_THAT(r.out, HasSubstr("must fit in u32"));
  r = RunKvstrata({"keys", fp, "--namespace=acme", "--tokens=1,x"});
  EXPECT_THAT(r.out, HasSubstr("item 1 ('x') is not an integer"));
  r = RunKvstrata({"keys", "--namespace=acme", "--tokens=1"});
  EXPECT_THAT(r.out, HasSubstr("--model-fingerprint is required"));
  r = RunKvstrata({"keys", fp, "--namespace=tenant:", "--tokens=1"});
  EXPECT_THAT(r.out, HasSubstr("tenant name is empty"));
  r = RunKvstrata({"keys", fp, "--namespace=acme", "--layout=gqa-fp16", "--tokens=1"});
  EXPECT_THAT(r.out, HasSubstr("unknown layout 'gqa-fp16'"));
  EXPECT_EQ(r.code, 2);
}

class InspectCli : public ::testing::Test {
 protected:
  void SetUp() override {
    std::mt19937 rng(seed_);
    PageSpec spec{LayoutId::kMlaFp8_656, {}, {}, 64, 0, 2};
    for (auto& b : spec.key.bytes) b = static_cast<uint8_t>(rng());
    std::vector<uint8_t> kv(64 * 2 * 656);
    for (auto& b : kv) b = static_cast<uint8_t>(rng());
    page_ = *EncodePage(spec, kv);
    key_hex_ = spec.key.Hex();
    dir_ = TempDir("inspect_cli");
  }
  void TearDown() override {
    if (HasFailure()) std::fprintf(stderr, "random seed was %u\n", seed_);
  }
  std::string Write(const std::string& name, const std::vector<uint8_t>& b) {
    WriteBytes(dir_ + "/" + name, b);
    return dir_ + "/" + name;
  }
  uint32_t seed_ = std::random_device{}();
  std::vector<uint8_t> page_;
  std::string key_hex_;
  std::string dir_;
};

TEST_F(InspectCli, GoodPagePrintsHeaderAndSections) {
  Result r = RunKvstrata({"inspect", Write("good.page", page_)});
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("OK"));
  EXPECT_THAT(r.out, HasSubstr(key_hex_));
  EXPECT_THAT(r.out, HasSubstr("mla-fp8-656"));
  EXPECT_THAT(r.out, HasSubstr("(chain root)"));
  Result j = RunKvstrata({"inspect", "--json", dir_ + "/good.page"});
  ASSERT_EQ(j.code, 0) << j.out;
  nlohmann::json doc = nlohmann::json::parse(j.out);
  EXPECT_EQ(doc["key"], key_hex_);
  EXPECT_EQ(doc["token_count"], 64);
  EXPECT_EQ(doc["sections"][0]["length"], 64 * 2 * 656);
}

TEST_F(InspectCli, CorruptPagesFailNamingThePart) {
  std::vector<uint8_t> b = page_;
  b[50] ^= 0x40;  // inside the key, in the header
  Result r = RunKvstrata({"inspect", Write("hdr.page", b)});
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_THAT(r.out, HasSubstr("header checksum mismatch"));
  b = page_;
  b[PageHeaderBytes(1) + 64 * 656 + 3] ^= 1;  // layer 1, token 0 of the kv section
  r = RunKvstrata({"inspect", Write("sec.page", b)});
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_THAT(r.out, HasSubstr("section 0 (kv) checksum mismatch"));
  b.assign(page_.begin(), page_.begin() + 100);
  r = RunKvstrata({"inspect", Write("short.page", b)});
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_THAT(r.out, HasSubstr("truncated: header says 84160 bytes, have 100"));
  r = RunKvstrata({"inspect", dir_ + "/missing.page"});
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.out, HasSubstr("cannot open"));
  r = RunKvstrata({"inspect"});
  EXPECT_EQ(r.code, 2);
}

TEST(ConversationCli, WritesPagesWithPrefixReuseThatInspectCleanly) {
  const std::string dir = TempDir("conversation_cli");
  Result r = RunKvstrata({"conversation", "--out=" + dir, "--layers=2", "--json"});
  ASSERT_EQ(r.code, 0) << r.out;
  nlohmann::json doc = nlohmann::json::parse(r.out);
  EXPECT_THAT(doc["kv_payload"].get<std::string>(), HasSubstr("synthetic"));
  const auto& turns = doc["turns"];
  ASSERT_EQ(turns.size(), 3u);
  size_t distinct = 0;
  for (size_t i = 0; i < turns.size(); ++i) {
    const auto& t = turns[i];
    EXPECT_EQ(t["full_blocks"].get<size_t>(), t["tokens"].get<size_t>() / 64);
    const size_t prev = i == 0 ? 0 : turns[i - 1]["full_blocks"].get<size_t>();
    EXPECT_EQ(t["reused_blocks"].get<size_t>(), prev) << "turn " << i + 1;
    EXPECT_EQ(t["new_blocks"].get<size_t>(), t["full_blocks"].get<size_t>() - prev);
    distinct += t["new_blocks"].get<size_t>();
  }
  EXPECT_GT(turns[0]["full_blocks"].get<size_t>(), 0u);
  distinct += doc["shared"]["full_blocks"].get<size_t>();
  size_t files = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    ASSERT_EQ(e.path().extension(), ".page");
    std::string bytes = ReadText(e.path().string());
    auto view = DecodePage(std::span(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
    ASSERT_TRUE(view.ok()) << e.path() << ": " << view.status();
    EXPECT_EQ(view->header().key.Hex() + ".page", e.path().filename().string());
    EXPECT_EQ(view->header().layer_count, 2u);
    ++files;
  }
  EXPECT_EQ(files, distinct);
  const std::string first = dir + "/" + turns[0]["keys"][0].get<std::string>() + ".page";
  Result ins = RunKvstrata({"inspect", first});
  EXPECT_EQ(ins.code, 0) << ins.out;
  EXPECT_THAT(ins.out, HasSubstr("(chain root)"));
}

}  // namespace
}  // namespace kv

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (argc < 3) {
    std::fprintf(stderr, "usage: cli_test PATH_TO_KVSTRATA SOURCE_ROOT [gtest flags]\n");
    return 2;
  }
  kv::g_binary = argv[1];
  kv::g_root = argv[2];
  return RUN_ALL_TESTS();
}
