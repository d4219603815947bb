#include "core/config.h"

#include <fstream>

#include <gtest/gtest.h>

namespace kv {
namespace {

struct Vars {
  std::string role = "all";
  int64_t port = 7000;
  double ratio = 0.5;
  bool verbose = false;
  absl::Duration ttl = absl::Seconds(30);
  std::vector<std::string> members;
};

void Bind(FlagSet& f, Vars& v) {
  f.String("role", &v.role, "node role");
  f.Int("grpc-port", &v.port, "port");
  f.Double("ratio", &v.ratio, "a ratio");
  f.Bool("verbose", &v.verbose, "chatty");
  f.Duration("lease-ttl", &v.ttl, "ttl");
  f.StringList("members", &v.members, "static members");
}

std::string WriteTmp(const std::string& name, const std::string& text) {
  const char* d = std::getenv("KVSTRATA_TEST_TMPDIR");
  std::string path = std::string(d ? d : "/tmp") + "/" + name;
  std::ofstream(path) << text;
  return path;
}

absl::Status ParseArgs(FlagSet& f, std::vector<std::string> args,
                       std::vector<std::string>* pos = nullptr) {
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  return f.Parse(static_cast<int>(argv.size()), argv.data(), pos);
}

TEST(FlagSet, CommandLine) {
  FlagSet f("test");
  Vars v;
  Bind(f, v);
  std::vector<std::string> pos;
  ASSERT_TRUE(ParseArgs(f,
                        {"prog", "--role=router", "--grpc-port", "9", "--verbose", "file1",
                         "--lease_ttl=250ms", "--members=a:1, b:2", "--ratio=0.25"},
                        &pos)
                  .ok());
  EXPECT_EQ(v.role, "router");
  EXPECT_EQ(v.port, 9);
  EXPECT_TRUE(v.verbose);
  EXPECT_EQ(v.ttl, absl::Milliseconds(250));
  EXPECT_EQ(v.members, (std::vector<std::string>{"a:1", "b:2"}));
  EXPECT_DOUBLE_EQ(v.ratio, 0.25);
  EXPECT_EQ(pos, (std::vector<std::string>{"file1"}));
  ASSERT_TRUE(ParseArgs(f, {"prog", "--no-verbose"}).ok());
  EXPECT_FALSE(v.verbose);
}

TEST(FlagSet, Errors) {
  FlagSet f("test");
  Vars v;
  Bind(f, v);
  absl::Status s = ParseArgs(f, {"prog", "--nope=1"});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("--nope"), std::string_view::npos);
  s = ParseArgs(f, {"prog", "--grpc-port=abc"});
  EXPECT_NE(s.message().find("grpc-port"), std::string_view::npos);
  EXPECT_FALSE(ParseArgs(f, {"prog", "--lease-ttl=forever"}).ok());
  EXPECT_FALSE(ParseArgs(f, {"prog", "stray"}).ok()) << "positional without a sink";
  EXPECT_FALSE(ParseArgs(f, {"prog", "--grpc-port"}).ok()) << "missing value";
}

TEST(FlagSet, ConfigFileThenCommandLineWins) {
  FlagSet f("test");
  Vars v;
  Bind(f, v);
  const std::string path = WriteTmp("config_test.yaml",
                                    "role: store\ngrpc_port: 1234\nverbose: true\n"
                                    "members: [n1:1, n2:2]\nlease-ttl: 5s\n");
  ASSERT_TRUE(ParseArgs(f, {"prog", "--grpc-port=99", "--config=" + path}).ok());
  EXPECT_EQ(v.role, "store");
  EXPECT_EQ(v.port, 99) << "command line wins over the file";
  EXPECT_TRUE(v.verbose);
  EXPECT_EQ(v.members, (std::vector<std::string>{"n1:1", "n2:2"}));
  EXPECT_EQ(v.ttl, absl::Seconds(5));
  EXPECT_EQ(f.config_path(), path);
}

TEST(FlagSet, ConfigFileErrorsNameTheKey) {
  FlagSet f("test");
  Vars v;
  Bind(f, v);
  absl::Status s = f.ApplyConfigText("role: a\nbogus: 1\n", "cfg.yaml");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("bogus"), std::string_view::npos);
  EXPECT_NE(s.message().find("cfg.yaml"), std::string_view::npos);
  s = f.ApplyConfigText("grpc-port: [1, 2]\n", "cfg.yaml");
  EXPECT_NE(s.message().find("grpc-port"), std::string_view::npos);
  EXPECT_FALSE(f.ApplyConfigText("role: [unterminated\n", "cfg.yaml").ok());
  EXPECT_FALSE(f.ApplyConfigText("- a\n- b\n", "cfg.yaml").ok()) << "not a mapping";
  EXPECT_EQ(f.ApplyConfigFile("/nonexistent/kvstrata.yaml").code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(f.ApplyConfigText("", "empty").ok());
}

TEST(FlagSet, DumpYamlRoundTrips) {
  FlagSet f("test");
  Vars v;
  Bind(f, v);
  v.role = "decode";
  v.members = {"x:1", "y:2"};
  v.ttl = absl::Milliseconds(1500);
  const std::string yaml = f.DumpYaml();
  FlagSet g("test");
  Vars w;
  Bind(g, w);
  ASSERT_TRUE(g.ApplyConfigText(yaml, "dump").ok()) << yaml;
  EXPECT_EQ(w.role, "decode");
  EXPECT_EQ(w.members, v.members);
  EXPECT_EQ(w.ttl, v.ttl);
  EXPECT_NE(f.Usage().find("--grpc-port"), std::string::npos);
}

}  // namespace
}  // namespace kv
