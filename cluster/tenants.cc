#include "cluster/tenants.h"

#include <yaml-cpp/yaml.h>

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
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

absl::StatusOr<CallIdentity> TenantAuth::Identify(
    std::optional<std::string_view> authorization,
    std::optional<std::string_view> tenant_header) const {
  const bool service = !service_token_.empty() && authorization.has_value() &&
                       *authorization == StrCat("Bearer ", service_token_);
  if (service) {
    if (!tenant_header || tenant_header->empty()) {
      return absl::UnauthenticatedError(
          StrCat("the node credential must name the tenant it acts for in `", kTenantHeader,
                 "` metadata"));
    }
    absl::StatusOr<KeyNamespace> ns = KeyNamespace::Tenant(*tenant_header);
    if (!ns.ok()) {
      return absl::UnauthenticatedError(
          StrCat("`", kTenantHeader, "` metadata: ", ns.status().message()));
    }
    if (single_ && *tenant_header != *single_) {
      return absl::PermissionDeniedError(StrCat("this server has the single tenant '", *single_,
                                                "'; `", kTenantHeader, "` names another"));
    }
    return CallIdentity{.tenant = std::string(*tenant_header), .node = true};
  }
  if (single_) {
    // No tokens file: every caller is the built-in tenant with a node's rights (as before the
    // node credential); a tenant header naming another tenant is still a mistake.
    if (tenant_header && *tenant_header != *single_) {
      return absl::PermissionDeniedError(StrCat("this server has the single tenant '", *single_,
                                                "'; `", kTenantHeader, "` names another"));
    }
    return CallIdentity{.tenant = *single_, .node = true};
  }
  ASSIGN_OR_RETURN(std::string tenant, Authenticate(authorization));
  if (tenant_header) {
    return absl::PermissionDeniedError(
        StrCat("`", kTenantHeader,
               "` metadata is honoured only with the node credential, not a tenant token"));
  }
  return CallIdentity{.tenant = std::move(tenant), .node = false};
}

absl::Status TenantAuth::SetServiceToken(std::string token) {
  if (token.empty()) return absl::InvalidArgumentError("empty service token");
  if (tokens_.contains(token)) {
    return absl::InvalidArgumentError(
        "the service token is also a tenant token in the tokens file; give nodes their own");
  }
  service_token_ = std::move(token);
  return absl::OkStatus();
}

absl::StatusOr<std::string> LoadServiceToken(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(StrCat("service token file ", path, " cannot be read"));
  std::string line;
  std::getline(in, line);
  const std::string token(absl::StripAsciiWhitespace(line));
  if (token.empty()) {
    return absl::InvalidArgumentError(
        StrCat("service token file ", path, " is empty (its first line must hold the token)"));
  }
  for (char c : token) {
    if (c <= ' ' || c == 0x7f) {
      return absl::InvalidArgumentError(StrCat(
          "service token file ", path, ": the token holds whitespace or a control character"));
    }
  }
  return token;
}

absl::StatusOr<TenantAuth> LoadTenantAuth(const std::string& tokens_file,
                                          const std::string& service_token_file) {
  TenantAuth auth = TenantAuth::SingleTenant("default");
  if (!tokens_file.empty()) {
    ASSIGN_OR_RETURN(auth, TenantAuth::LoadFile(tokens_file));
  }
  if (!service_token_file.empty()) {
    ASSIGN_OR_RETURN(std::string token, LoadServiceToken(service_token_file));
    absl::Status s = auth.SetServiceToken(std::move(token));
    if (!s.ok()) {
      return absl::InvalidArgumentError(
          StrCat("service token file ", service_token_file, ": ", s.message()));
    }
  }
  return auth;
}

void AddNodeCredential(grpc::ClientContext* ctx, const std::string& service_token,
                       const std::string& tenant) {
  if (!service_token.empty()) ctx->AddMetadata("authorization", StrCat("Bearer ", service_token));
  if (!tenant.empty()) ctx->AddMetadata(kTenantHeader, tenant);
}

namespace {

std::optional<std::string_view> Metadata(const grpc::ServerContextBase* ctx, std::string_view key) {
  const auto& md = ctx->client_metadata();
  auto it = md.find(grpc::string_ref(key.data(), key.size()));
  if (it == md.end()) return std::nullopt;
  return std::string_view(it->second.data(), it->second.size());
}

}  // namespace

absl::StatusOr<CallIdentity> IdentifyCall(const TenantAuth& auth,
                                          const grpc::ServerContextBase* ctx) {
  return auth.Identify(Metadata(ctx, "authorization"), Metadata(ctx, kTenantHeader));
}

absl::StatusOr<std::string> AuthenticateCall(const TenantAuth& auth,
                                             const grpc::ServerContextBase* ctx) {
  ASSIGN_OR_RETURN(CallIdentity id, IdentifyCall(auth, ctx));
  return std::move(id.tenant);
}

absl::StatusOr<CallIdentity> RequireNode(const TenantAuth& auth, const grpc::ServerContextBase* ctx,
                                         std::string_view what) {
  ASSIGN_OR_RETURN(CallIdentity id, IdentifyCall(auth, ctx));
  if (!id.node) {
    return absl::PermissionDeniedError(
        StrCat(what,
               " is node-internal: it needs the node credential (the cluster's service "
               "token), not a tenant token"));
  }
  return id;
}

}  // namespace kv::cluster
