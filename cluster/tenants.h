// TenantAuth: maps the bearer token of a gRPC call to the caller's tenant (the block-key
// namespace; proto/kvstrata/v1/common.proto "Authentication").
//
// The tokens file is a YAML mapping of bearer token to tenant name:
//
//   # tokens.yaml
//   s3cr3t-acme: acme
//   s3cr3t-globex: globex
//
// A caller sends `authorization: Bearer <token>`; a missing header, another scheme, or a
// token not in the file is UNAUTHENTICATED. The tenant is never taken from a request body;
// a request can only opt a prefix into the explicit `shared` namespace.
//
// Without a tokens file (the embedded default of `serve --role=all`), SingleTenant("default")
// accepts every call, with or without a token, as the built-in tenant "default". Anyone who
// can reach the port is then that tenant: configure a tokens file before exposing a server.
//
// Thread-safety: immutable after construction; Authenticate() is safe to call concurrently.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>

#include <grpcpp/server_context.h>

#include "absl/status/statusor.h"

namespace kv::cluster {

class TenantAuth {
 public:
  // Every call is `tenant`, token or not.
  static TenantAuth SingleTenant(std::string tenant);
  // Parses a tokens file. NotFound if it cannot be read; InvalidArgument naming the file
  // and the entry for a syntax error, a non-mapping document, an empty token, a tenant
  // name KeyNamespace refuses, or no entries.
  static absl::StatusOr<TenantAuth> LoadFile(const std::string& path);
  // The same from YAML text; `origin` names it in errors.
  static absl::StatusOr<TenantAuth> Parse(std::string_view yaml, std::string_view origin);

  // The tenant of a call whose `authorization` metadata is `authorization` (nullopt when
  // the header is absent). UNAUTHENTICATED with a message saying what is wrong otherwise.
  absl::StatusOr<std::string> Authenticate(std::optional<std::string_view> authorization) const;

  bool requires_token() const { return !single_.has_value(); }
  size_t num_tokens() const { return tokens_.size(); }

 private:
  TenantAuth() = default;
  std::optional<std::string> single_;
  std::map<std::string, std::string, std::less<>> tokens_;
};

// The tenants of a node: the tokens file's, or, for an empty path, every call is the
// built-in tenant "default". Errors as TenantAuth::LoadFile.
absl::StatusOr<TenantAuth> LoadTenantAuth(const std::string& tokens_file);

// The `authorization` metadata of a server call ("" when absent), to forward downstream.
std::string AuthorizationOf(const grpc::ServerContextBase* ctx);
// auth.Authenticate() of a server call's `authorization` metadata.
absl::StatusOr<std::string> AuthenticateCall(const TenantAuth& auth,
                                             const grpc::ServerContextBase* ctx);

}  // namespace kv::cluster
