#include "cluster/node.h"

#include <filesystem>
#include <system_error>
#include <utility>

#include "core/logging.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kernels/kv_layout.h"
#include "kvstore/nvme_tier.h"
#include "kvstore/slab_tier.h"
#include "model/config.h"
#include "model/weights.h"

namespace kv::cluster {
namespace {

absl::StatusOr<std::unique_ptr<Tier>> SlabOf(TierKind kind, uint64_t bytes, uint64_t slab) {
  absl::StatusOr<std::unique_ptr<MemoryRegion>> region =
      kind == TierKind::kDevice ? AllocateDeviceRegion(bytes) : AllocateHostRegion(bytes);
  if (!region.ok()) return Annotate(region.status(), StrCat(TierName(kind), " tier"));
  ASSIGN_OR_RETURN(std::unique_ptr<SlabTier> tier,
                   SlabTier::Create(*std::move(region), {.kind = kind, .slab_bytes = slab}));
  return std::unique_ptr<Tier>(std::move(tier));
}

}  // namespace

absl::Status ValidateNodeOptions(const NodeOptions& o) {
  if (o.data_dir.empty()) return absl::InvalidArgumentError("data-dir is required");
  if (!o.kv_layout.empty()) {
    absl::StatusOr<LayoutInfo> layout = LookupLayout(std::string_view(o.kv_layout));
    if (!layout.ok() || !layout->supported) {
      return absl::InvalidArgumentError(StrCat("unknown KV layout '", o.kv_layout,
                                               "' (expected mla-fp8-656, mla-bf16-1152 or "
                                               "v4-fp8-584)"));
    }
  }
  if (o.slab_bytes < (64u << 10)) {
    return absl::InvalidArgumentError("slab size must be at least 64 KiB");
  }
  for (auto [name, bytes] :
       {std::pair{"device", o.device_bytes}, std::pair{"host", o.host_bytes}}) {
    if (bytes != 0 && bytes < o.slab_bytes) {
      return absl::InvalidArgumentError(StrCat(name, " tier capacity ", bytes,
                                               " bytes is below one slab (", o.slab_bytes,
                                               " bytes); use 0 to disable the tier"));
    }
  }
  if (o.device_bytes == 0 && o.host_bytes == 0 && o.nvme_bytes == 0) {
    return absl::InvalidArgumentError("every tier is disabled; give at least one a capacity");
  }
  if (absl::Status s = ValidateKeyChain(o.key_chain, o.engine_hash_seed); !s.ok()) {
    return absl::InvalidArgumentError(StrCat("key-chain: ", s.message()));
  }
  if (o.max_context < 0) return absl::InvalidArgumentError("max-context must be >= 0");
  if (o.compute_threads < 0 || o.compute_threads > 1024) {
    return absl::InvalidArgumentError(
        StrCat("compute threads must be in 0..1024 (0: one per core), got ", o.compute_threads));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> EnsureModelDir(const NodeOptions& options) {
  if (!options.model_dir.empty()) return options.model_dir;
  if (options.data_dir.empty()) return absl::InvalidArgumentError("data-dir is required");
  std::error_code ec;
  std::filesystem::create_directories(options.data_dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        StrCat("cannot create data dir ", options.data_dir, ": ", ec.message()));
  }
  const std::string dir = (std::filesystem::path(options.data_dir) / "model-tiny-v3").string();
  if (!std::filesystem::exists(std::filesystem::path(dir) / "config.json")) {
    ASSIGN_OR_RETURN(model::ModelConfig c, model::PresetConfig("tiny-v3"));
    RETURN_IF_ERROR(Annotate(model::WriteRandomModel(c, options.model_seed, dir),
                             "creating the tiny-v3 model"));
    log::Info("model_created", "dir", dir, "preset", "tiny-v3", "seed", options.model_seed);
  }
  return dir;
}

absl::StatusOr<std::unique_ptr<TieredStore>> OpenStore(const NodeOptions& options) {
  RETURN_IF_ERROR(ValidateNodeOptions(options));
  std::error_code ec;
  std::filesystem::create_directories(options.data_dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        StrCat("cannot create data dir ", options.data_dir, ": ", ec.message()));
  }
  std::array<std::unique_ptr<Tier>, kNumTiers> tiers;
  if (options.device_bytes > 0) {
    ASSIGN_OR_RETURN(tiers[0], SlabOf(TierKind::kDevice, options.device_bytes, options.slab_bytes));
  }
  if (options.host_bytes > 0) {
    ASSIGN_OR_RETURN(tiers[1], SlabOf(TierKind::kHost, options.host_bytes, options.slab_bytes));
  }
  if (options.nvme_bytes > 0) {
    NvmeTierOptions n;
    n.path = (std::filesystem::path(options.data_dir) / "nvme").string();
    n.capacity_bytes = options.nvme_bytes;
    n.write_buffer_bytes = 16ull << 20;
    ASSIGN_OR_RETURN(auto nvme, NvmeTier::Open(n));
    tiers[2] = std::move(nvme);
  }
  TieredStoreOptions so;
  so.clock = options.clock;
  so.metrics = options.metrics;
  so.residency_listener = options.residency_listener;
  // Durability policy (docs/serving.md "Durability and tier health"): every page also goes
  // to nvme in the background, and the SIGTERM path flushes the rest.
  so.persist_to_nvme = true;
  return TieredStore::Open(so, std::move(tiers));
}

void ReportTierHealth(TieredStore& store, GrpcServer& grpc) {
  store.SetTierHealthListener([&grpc](TierKind kind, const absl::Status& st) {
    grpc.SetServiceServing(StrCat(kTierHealthPrefix, TierName(kind)), st.ok());
  });
}

void StopTierHealthReport(TieredStore& store) { store.SetTierHealthListener(nullptr); }

std::string TierHealthDetail(TieredStore& store) {
  std::string out;
  for (int t = 0; t < kNumTiers; ++t) {
    absl::Status st = store.TierHealth(static_cast<TierKind>(t));
    if (!st.ok()) out = StrCat(out, out.empty() ? "" : "; ", st.message());
  }
  return out;
}

void FlushStoreForShutdown(TieredStore& store, absl::Duration budget) {
  if (store.tier(TierKind::kNvme) == nullptr) return;
  const absl::Time start = store.clock()->Now();
  absl::StatusOr<FlushResult> r = store.Flush(start + budget);
  const double seconds = absl::ToDoubleSeconds(store.clock()->Now() - start);
  if (!r.ok()) {
    log::Warn("shutdown_flush_failed", "error", r.status().ToString());
  } else if (r->remaining > 0) {
    log::Warn("shutdown_flush_incomplete", "persisted", r->persisted, "not_persisted", r->remaining,
              "seconds", seconds, "health", TierHealthDetail(store));
  } else {
    log::Info("shutdown_flushed", "persisted", r->persisted, "seconds", seconds);
  }
}

}  // namespace kv::cluster
