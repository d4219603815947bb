#include "kvstore/page_pool.h"

#include <memory>
#include <utility>

#include "core/logging.h"
#include "core/status_macros.h"

namespace kv {

std::vector<std::vector<uint8_t>> PoolPages::Copy() const {
  std::vector<std::vector<uint8_t>> out;
  out.reserve(pages.size());
  for (std::span<const uint8_t> p : pages) out.emplace_back(p.begin(), p.end());
  return out;
}

absl::StatusOr<PoolPages> PagePool::ReadView(const std::string& address,
                                             std::span<const BlockKey> keys,
                                             const std::string& lease_id, const std::string& tenant,
                                             absl::Time deadline, std::string* path,
                                             const std::string& lent) {
  ASSIGN_OR_RETURN(std::vector<std::vector<uint8_t>> read,
                   Read(address, keys, lease_id, tenant, deadline, path, lent));
  auto owned = std::make_shared<std::vector<std::vector<uint8_t>>>(std::move(read));
  PoolPages out{.pages = {owned->begin(), owned->end()}};
  out.hold = std::move(owned);
  return out;
}

int64_t PublishChain(PagePool& pool, std::span<const BlockKey> keys,
                     std::span<const std::string> ns, int64_t from, std::span<const PoolPage> pages,
                     PoolWriteOptions options, const std::string& tenant) {
  if (keys.empty() || pages.empty()) return 0;
  const std::string shared_ns = KeyNamespace::Shared().ToString();
  int64_t published = 0;
  for (size_t i = 0; i < pages.size();) {
    const bool shared = ns[from + i] == shared_ns;
    size_t j = i;
    while (j < pages.size() && (ns[from + j] == shared_ns) == shared) ++j;
    options.shared_namespace = shared;
    absl::StatusOr<int64_t> stored =
        pool.Publish(keys[0], pages.subspan(i, j - i), options, tenant);
    if (!stored.ok()) {
      log::Warn("publish_failed", "error", stored.status().ToString());
      break;
    }
    published += *stored;
    if (*stored < static_cast<int64_t>(j - i)) break;  // a rejected page ends the chain
    i = j;
  }
  return published;
}

}  // namespace kv
