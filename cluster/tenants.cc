#include "cluster/tenants.h"

#include <yaml-cpp/yaml.h>

#include <fstream>
#include <sstream>

#include "core/status_macros.h"
#include "core/strings.h"
#include "kvstore/block_key.h"

namespace kv::cluster {

TenantAuth TenantAuth::SingleTenant(std::string tenant) {
  TenantAuth a;
  a.single_ = std::move(tenant);
  return a;
}

absl::StatusOr<TenantAuth> TenantAuth::LoadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(StrCat("tokens file ", path, " cannot be read"));
  std::stringstream ss;
  ss << in.rdbuf();
  return Parse(ss.str(), path);
}

absl::StatusOr<TenantAuth> TenantAuth::Parse(std::string_view yaml, std::string_view origin) {
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(StrCat("tokens file ", origin, ": ", e.what()));
  }
  if (!root.IsMap()) {
    return absl::InvalidArgumentError(
        StrCat("tokens file ", origin, ": expected a mapping of bearer token to tenant"));
  }
  TenantAuth a;
  for (const auto& kv : root) {
    if (!kv.first.IsScalar() || !kv.second.IsScalar()) {
      return absl::InvalidArgumentError(
          StrCat("tokens file ", origin, ": every entry must be `token: tenant`"));
    }
    std::string token = kv.first.Scalar(), tenant = kv.second.Scalar();
    if (token.empty()) {
      return absl::InvalidArgumentError(StrCat("tokens file ", origin, ": empty token"));
    }
    absl::StatusOr<KeyNamespace> ns = KeyNamespace::Tenant(tenant);
    if (!ns.ok()) {
      return absl::InvalidArgumentError(StrCat("tokens file ", origin, ": tenant of token #",
                                               a.tokens_.size() + 1, ": ", ns.status().message()));
    }
    if (!a.tokens_.emplace(std::move(token), std::move(tenant)).second) {
      return absl::InvalidArgumentError(StrCat("tokens file ", origin, ": duplicate token"));
    }
  }
  if (a.tokens_.empty()) {
    return absl::InvalidArgumentError(StrCat("tokens file ", origin, ": no tokens"));
  }
  return a;
}

absl::StatusOr<std::string> TenantAuth::Authenticate(
    std::optional<std::string_view> authorization) const {
  if (single_) return *single_;
  if (!authorization) {
    return absl::UnauthenticatedError(
        "missing `authorization: Bearer <token>` metadata (this server requires a token)");
  }
  constexpr std::string_view kBearer = "Bearer ";
  std::string_view v = *authorization;
  if (v.size() <= kBearer.size() || v.substr(0, kBearer.size()) != kBearer) {
    return absl::UnauthenticatedError("authorization metadata must be `Bearer <token>`");
  }
  auto it = tokens_.find(v.substr(kBearer.size()));
  if (it == tokens_.end()) return absl::UnauthenticatedError("invalid bearer token");
  return it->second;
}

absl::StatusOr<TenantAuth> LoadTenantAuth(const std::string& tokens_file) {
  if (tokens_file.empty()) return TenantAuth::SingleTenant("default");
  return TenantAuth::LoadFile(tokens_file);
}

std::string AuthorizationOf(const grpc::ServerContextBase* ctx) {
  const auto& md = ctx->client_metadata();
  auto it = md.find("authorization");
  return it == md.end() ? std::string() : std::string(it->second.data(), it->second.size());
}

absl::StatusOr<std::string> AuthenticateCall(const TenantAuth& auth,
                                             const grpc::ServerContextBase* ctx) {
  const auto& md = ctx->client_metadata();
  auto it = md.find("authorization");
  std::optional<std::string_view> value;
  if (it != md.end()) value = std::string_view(it->second.data(), it->second.size());
  return auth.Authenticate(value);
}

}  // namespace kv::cluster
