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
// accepts every call, with or without a token, as the built-in tenant "default", with every
// right a node has. Anyone who can reach the port is then that tenant: configure a tokens
// file before exposing a server.
//
// Node credential (issue #18 item 1; docs/serving.md "Security model"). Every node of a
// cluster holds the same service token (`--service-token-file`). A node calling another node
// for an end user sends `authorization: Bearer <service token>` and names the tenant it acts
// for in `x-kvstrata-tenant` metadata (kTenantHeader); Identify() then returns that tenant with
// `node` set. The tenant header is honoured only together with the service token: a tenant
// token with a tenant header is PERMISSION_DENIED, and a service token without one is
// UNAUTHENTICATED. What a tenant (node = false) may call is each service's rule: the Cluster
// API, and the PageStore service for its own namespace (shared pages read-only); the Worker
// service and node-internal RPCs need `node`.
//
// Thread-safety: immutable after construction; Authenticate() is safe to call concurrently.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>

#include <grpcpp/client_context.h>
#include <grpcpp/server_context.h>

#include "absl/status/statusor.h"

namespace kv::cluster {

// The metadata key naming the tenant a node credential acts for.
inline constexpr char kTenantHeader[] = "x-kvstrata-tenant";

// Who a call is: the tenant it acts for, and whether it carries the node credential (or the
// server has no tokens file, where every caller has a node's rights).
struct CallIdentity {
  std::string tenant;
  bool node = false;
};

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
  // The service token is not a tenant token: it is UNAUTHENTICATED here (use Identify).
  absl::StatusOr<std::string> Authenticate(std::optional<std::string_view> authorization) const;
  // Who a call is, from its `authorization` and `x-kvstrata-tenant` metadata (nullopt when
  // absent): the rules of the header comment. UNAUTHENTICATED / PERMISSION_DENIED with a
  // message saying what is wrong.
  absl::StatusOr<CallIdentity> Identify(std::optional<std::string_view> authorization,
                                        std::optional<std::string_view> tenant_header) const;

  // Accepts `token` as the node credential. InvalidArgument when it is empty or is also a
  // tenant token of the tokens file.
  absl::Status SetServiceToken(std::string token);

  bool requires_token() const { return !single_.has_value(); }
  bool has_service_token() const { return !service_token_.empty(); }
  // The node credential this node calls other nodes with ("" when none).
  const std::string& service_token() const { return service_token_; }
  size_t num_tokens() const { return tokens_.size(); }

 private:
  TenantAuth() = default;
  std::optional<std::string> single_;
  std::map<std::string, std::string, std::less<>> tokens_;
  std::string service_token_;  // empty: none configured
};

// The tenants of a node: the tokens file's, or, for an empty path, every call is the
// built-in tenant "default"; with `service_token_file`, its token is the node credential.
// Errors as TenantAuth::LoadFile and LoadServiceToken.
absl::StatusOr<TenantAuth> LoadTenantAuth(const std::string& tokens_file,
                                          const std::string& service_token_file = "");

// The service token in `path`: its first line, surrounding whitespace trimmed. NotFound when
// the file cannot be read; InvalidArgument when the token is empty or holds whitespace or
// control characters (an HTTP/2 header value must not).
absl::StatusOr<std::string> LoadServiceToken(const std::string& path);

// Sets a node-to-node call's credential: `authorization: Bearer <service_token>` (none when
// empty: a cluster without tokens file and service token) and `x-kvstrata-tenant: <tenant>`
// (none when empty).
void AddNodeCredential(grpc::ClientContext* ctx, const std::string& service_token,
                       const std::string& tenant);

// Identify() of a server call's `authorization` and `x-kvstrata-tenant` metadata.
absl::StatusOr<CallIdentity> IdentifyCall(const TenantAuth& auth,
                                          const grpc::ServerContextBase* ctx);
// The tenant of a server call (IdentifyCall's tenant, node or not).
absl::StatusOr<std::string> AuthenticateCall(const TenantAuth& auth,
                                             const grpc::ServerContextBase* ctx);
// IdentifyCall, PERMISSION_DENIED unless the call carries the node credential; `what` names
// the service or RPC in the message.
absl::StatusOr<CallIdentity> RequireNode(const TenantAuth& auth, const grpc::ServerContextBase* ctx,
                                         std::string_view what);

}  // namespace kv::cluster
