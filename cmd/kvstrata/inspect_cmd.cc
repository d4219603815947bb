// `kvstrata inspect`: decodes a page, verifies every checksum, prints its header and
// section table (docs/formats.md §2).
//
//   kvstrata inspect FILE [FILE...] [--json]
//   kvstrata inspect --nvme=DIR --key=HEX[,HEX...] [--namespace=NS] [--json]   (nvme tier)
//
// Exit status: 0 when every page verifies; 1 when any page is corrupt or malformed (the
// message names the part: "header checksum mismatch", "section 0 (kv) checksum mismatch",
// "truncated: ..."); 2 for usage errors. The page source is separate from the printing
// (InspectBytes), so other sources (a tier, by key) can reuse it.
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "cmd/kvstrata/command.h"
#include "core/config.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kvstore/block_key.h"
#include "kvstore/nvme_tier.h"
#include "kvstore/page_format.h"
#include "kvstore/page_store.h"
#include "nlohmann/json.hpp"

namespace kv::cmd {
namespace {

constexpr uint64_t kMaxPageFileBytes = uint64_t{1} << 30;

absl::StatusOr<std::vector<uint8_t>> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return absl::NotFoundError(kv::StrCat(path, ": cannot open"));
  const std::streamoff size = in.tellg();
  if (size < 0 || static_cast<uint64_t>(size) > kMaxPageFileBytes) {
    return absl::InvalidArgumentError(kv::StrCat(path, ": ", size, " bytes is not a page size"));
  }
  std::vector<uint8_t> bytes(static_cast<size_t>(size));
  in.seekg(0);
  if (!in.read(reinterpret_cast<char*>(bytes.data()), size)) {
    return absl::DataLossError(kv::StrCat(path, ": short read"));
  }
  return bytes;
}

nlohmann::json PageJson(const PageView& v) {
  const PageHeader& h = v.header();
  nlohmann::json j = {{"format_version", h.format_version},
                      {"layout", std::string(h.layout.name)},
                      {"record_bytes", h.layout.record_bytes},
                      {"key", h.key.Hex()},
                      {"parent", h.parent.Hex()},
                      {"token_count", h.token_count},
                      {"first_layer", h.first_layer},
                      {"layer_count", h.layer_count},
                      {"page_bytes", h.page_bytes},
                      {"header_bytes", h.header_bytes()},
                      {"layer_bytes", v.layer_bytes()},
                      {"verified", true},
                      {"sections", nlohmann::json::array()}};
  if (h.layout.is_gqa()) {  // record bytes depend on the page's head geometry
    j["record_bytes"] = h.record_bytes();
    j["num_kv_heads"] = h.gqa.num_kv_heads;
    j["head_dim"] = h.gqa.head_dim;
  }
  for (const SectionInfo& s : h.sections) {
    j["sections"].push_back({{"kind", SectionKindName(static_cast<uint16_t>(s.kind))},
                             {"offset", s.offset},
                             {"length", s.length},
                             {"xxh3_64", fmt::format("{:016x}", s.checksum)}});
  }
  return j;
}

void PrintPageText(const PageView& v, std::string_view label) {
  const PageHeader& h = v.header();
  std::printf("page %.*s: OK (header and %zu section checksum(s) verified)\n",
              static_cast<int>(label.size()), label.data(), h.sections.size());
  std::printf("  format version  %u\n", h.format_version);
  std::printf("  layout          %.*s (code %u, %llu B per token per layer)\n",
              static_cast<int>(h.layout.name.size()), h.layout.name.data(),
              static_cast<unsigned>(h.layout.id),
              static_cast<unsigned long long>(h.record_bytes()));
  if (h.layout.is_gqa()) {
    std::printf("  geometry        %u kv heads x %u head dim (K then V per layer)\n",
                h.gqa.num_kv_heads, h.gqa.head_dim);
  }
  std::printf("  key             %s\n", h.key.Hex().c_str());
  std::printf("  parent          %s%s\n", h.parent.Hex().c_str(),
              h.parent.IsZero() ? " (chain root)" : "");
  std::printf("  tokens          %u\n", h.token_count);
  std::printf("  layers          [%u, %llu)  (%llu B per layer)\n", h.first_layer,
              static_cast<unsigned long long>(uint64_t{h.first_layer} + h.layer_count),
              static_cast<unsigned long long>(v.layer_bytes()));
  std::printf("  page bytes      %llu (header %zu)\n",
              static_cast<unsigned long long>(h.page_bytes), h.header_bytes());
  std::printf("  sections:\n    %-3s %-14s %12s %12s  %-16s\n", "#", "kind", "offset", "length",
              "xxh3-64");
  for (size_t i = 0; i < h.sections.size(); ++i) {
    const SectionInfo& s = h.sections[i];
    std::printf("    %-3zu %-14s %12llu %12llu  %016llx  ok\n", i,
                SectionKindName(static_cast<uint16_t>(s.kind)).c_str(),
                static_cast<unsigned long long>(s.offset),
                static_cast<unsigned long long>(s.length),
                static_cast<unsigned long long>(s.checksum));
  }
}

// Decodes and verifies `bytes` and prints it. Returns the decode error (naming the part)
// for a corrupt or malformed page.
absl::Status InspectBytes(std::span<const uint8_t> bytes, std::string_view label, bool json) {
  auto view = DecodePage(bytes);
  if (!view.ok()) return Annotate(view.status(), label);
  if (json) {
    nlohmann::json j = PageJson(*view);
    j["source"] = std::string(label);
    std::printf("%s\n", j.dump(1).c_str());
  } else {
    PrintPageText(*view, label);
  }
  return absl::OkStatus();
}

// Reads one page out of the nvme tier (RocksDB, opened read-only) and inspects it: the copy
// of namespace `ns` (kvstore/page_store.h StorageKey), or, with `ns` empty, the record keyed
// by `hex` itself.
absl::Status InspectNvmeKey(const std::string& dir, const std::string& hex, const std::string& ns,
                            bool json) {
  ASSIGN_OR_RETURN(BlockKey key, BlockKey::FromHex(hex));
  if (!ns.empty()) {
    ASSIGN_OR_RETURN(KeyNamespace parsed, KeyNamespace::Parse(ns));
    key = StorageKey(parsed.ToString(), key);
  }
  auto bytes = ReadPageFromNvme(dir, key);
  if (!bytes.ok()) return Annotate(bytes.status(), kv::StrCat("nvme ", dir, " key ", hex));
  return InspectBytes(*bytes, kv::StrCat("nvme:", hex), json);
}

int RunInspect(int argc, char** argv) {
  bool json = false;
  std::string nvme_dir;
  std::vector<std::string> keys;
  FlagSet flags("kvstrata inspect");
  flags.Bool("json", &json, "print each page as a JSON object");
  flags.String("nvme", &nvme_dir, "read pages out of the nvme tier at this path (with --key)");
  flags.StringList("key", &keys, "block keys (hex) to read from --nvme");
  std::string ns;
  flags.String("namespace", &ns,
               "the keys' namespace (\"shared\" or \"tenant:NAME\"): read that namespace's "
               "copy, as a PageStore indexes it; unset: records keyed by --key itself");
  std::vector<std::string> files;
  absl::Status s = flags.Parse(argc, argv, &files);
  if (s.ok() && flags.help_requested()) {
    std::printf("%s", flags
                          .Usage("kvstrata inspect PAGE_FILE [PAGE_FILE...] [flags]\n"
                                 "       kvstrata inspect --nvme=DIR --key=HEX[,HEX...] [flags]")
                          .c_str());
    return 0;
  }
  if (s.ok() && nvme_dir.empty() != keys.empty()) {
    s = absl::InvalidArgumentError("--nvme and --key go together");
  }
  if (s.ok() && files.empty() && keys.empty()) s = absl::InvalidArgumentError("no page given");
  if (!s.ok()) {
    std::fprintf(stderr, "kvstrata inspect: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  int rc = 0;
  auto report = [&rc](const absl::Status& st) {
    if (!st.ok()) {
      std::fprintf(stderr, "kvstrata inspect: %s\n", std::string(st.message()).c_str());
      rc = 1;
    }
  };
  for (const std::string& path : files) {
    auto bytes = ReadFile(path);
    report(bytes.ok() ? InspectBytes(*bytes, path, json) : bytes.status());
  }
  for (const std::string& hex : keys) report(InspectNvmeKey(nvme_dir, hex, ns, json));
  return rc;
}

}  // namespace

KV_REGISTER_COMMAND(inspect, "decode and verify pages (files, or --nvme=DIR --key=HEX)",
                    RunInspect);

}  // namespace kv::cmd
