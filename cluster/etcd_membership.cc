#include "cluster/etcd_membership.h"

#include <algorithm>
#include <utility>
#include <vector>

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include "absl/strings/match.h"
#include "cluster/grpc_status.h"
#include "core/logging.h"
#include "core/status_macros.h"
#include "core/strings.h"

namespace kv::cluster {
namespace {

using kvstrata::v1::NodeInfo;

absl::Status ValidateOptions(const EtcdMembershipOptions& o) {
  if (o.endpoint.empty()) return absl::InvalidArgumentError("etcd membership: empty endpoint");
  if (o.prefix.empty()) return absl::InvalidArgumentError("etcd membership: empty key prefix");
  if (o.ttl < absl::Seconds(1)) {
    return absl::InvalidArgumentError(
        kv::StrCat("etcd membership: ttl must be at least 1s, got ", absl::FormatDuration(o.ttl)));
  }
  if (o.rpc_timeout <= absl::ZeroDuration() || o.retry_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "etcd membership: rpc_timeout and retry_interval must be positive");
  }
  if (o.clock == nullptr) return absl::InvalidArgumentError("etcd membership: null clock");
  return absl::OkStatus();
}

std::string StripScheme(std::string endpoint) {
  for (const char* scheme : {"http://", "https://"}) {
    if (absl::StartsWith(endpoint, scheme)) return endpoint.substr(strlen(scheme));
  }
  return endpoint;
}

absl::Status EtcdError(const grpc::Status& s, std::string_view what, std::string_view endpoint) {
  return kv::Annotate(FromGrpcStatus(s), kv::StrCat("etcd ", what, " at ", endpoint));
}

}  // namespace

std::string EtcdPrefixEnd(const std::string& prefix) {
  std::string end = prefix;
  while (!end.empty()) {
    unsigned char last = static_cast<unsigned char>(end.back());
    if (last < 0xff) {
      end.back() = static_cast<char>(last + 1);
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');  // etcd: "every key >= prefix"
}

EtcdMembership::EtcdMembership(EtcdMembershipOptions options)
    : MembershipBase(options.clock),
      options_(std::move(options)),
      range_end_(EtcdPrefixEnd(options_.prefix)) {
  grpc::ChannelArguments args;
  // Notice a silently dead etcd (no RST) on long-lived streams; etcd's default minimum ping
  // interval is 5 s, so stay above it.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
  // Reconnect quickly once etcd is back (gRPC's default backoff grows to 120 s). The minimum
  // reconnect backoff is left alone: it is also the connect timeout, and etcd's listener
  // can take longer than a few hundred milliseconds to complete a handshake.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  channel_ = grpc::CreateCustomChannel(StripScheme(options_.endpoint),
                                       grpc::InsecureChannelCredentials(), args);
  kv_ = etcdserverpb::KV::NewStub(channel_);
  watch_ = etcdserverpb::Watch::NewStub(channel_);
  lease_ = etcdserverpb::Lease::NewStub(channel_);
}

absl::StatusOr<std::unique_ptr<EtcdMembership>> EtcdMembership::Start(
    EtcdMembershipOptions options) {
  RETURN_IF_ERROR(ValidateOptions(options));
  std::unique_ptr<EtcdMembership> m(new EtcdMembership(std::move(options)));
  absl::StatusOr<int64_t> revision = m->ReadAll();
  if (!revision.ok()) return kv::MarkRetryable(revision.status());
  EtcdMembership* raw = m.get();
  const int64_t start = *revision;
  m->watch_thread_ = std::thread([raw, start] { raw->WatchLoop(start); });
  kv::log::Info("etcd_membership_started", "endpoint", m->options_.endpoint, "prefix",
                m->options_.prefix, "members", m->Members().members.size());
  return m;
}

EtcdMembership::~EtcdMembership() { Close(); }

void EtcdMembership::SetDeadline(grpc::ClientContext* ctx) const {
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + options_.rpc_timeout));
}

int64_t EtcdMembership::lease_id() {
  kv::MutexLock lock(&mu_);
  return lease_id_;
}

// ---- reading and watching -------------------------------------------------------------------

absl::StatusOr<int64_t> EtcdMembership::ReadAll() {
  etcdserverpb::RangeRequest request;
  request.set_key(options_.prefix);
  request.set_range_end(range_end_);
  etcdserverpb::RangeResponse response;
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  grpc::Status s = kv_->Range(&ctx, request, &response);
  if (!s.ok()) return EtcdError(s, "range", options_.endpoint);
  std::vector<NodeInfo> members;
  for (const mvccpb::KeyValue& record : response.kvs()) {
    NodeInfo node;
    const std::string id =
        record.key().substr(std::min(record.key().size(), options_.prefix.size()));
    if (!node.ParseFromString(record.value()) || node.node_id() != id) {
      kv::log::Warn("etcd_member_record_invalid", "key", record.key());
      continue;
    }
    members.push_back(std::move(node));
  }
  ReplaceAll(std::move(members));
  return response.header().revision();
}

void EtcdMembership::WatchLoop(int64_t start_revision) {
  int64_t next_revision = start_revision + 1;
  while (true) {
    absl::Status st = WatchFrom(&next_revision);
    if (!SleepUnlessClosing(absl::ZeroDuration())) return;
    kv::log::Warn("etcd_watch_lost", "endpoint", options_.endpoint, "status", st.ToString());
    SetStale(true);
    while (true) {
      if (!SleepUnlessClosing(options_.retry_interval)) return;
      absl::StatusOr<int64_t> revision = ReadAll();  // clears stale on success
      if (revision.ok()) {
        kv::log::Info("etcd_membership_resynced", "endpoint", options_.endpoint);
        next_revision = *revision + 1;
        break;
      }
    }
  }
}

absl::Status EtcdMembership::WatchFrom(int64_t* next_revision) {
  grpc::ClientContext ctx;
  if (!TrackContext(&watch_ctx_, &ctx)) return absl::CancelledError("closing");
  auto stream = watch_->Watch(&ctx);
  etcdserverpb::WatchRequest request;
  auto* create = request.mutable_create_request();
  create->set_key(options_.prefix);
  create->set_range_end(range_end_);
  create->set_start_revision(*next_revision);
  absl::Status result = absl::UnavailableError("etcd closed the watch stream");
  if (stream->Write(request)) {
    etcdserverpb::WatchResponse response;
    while (stream->Read(&response)) {
      if (response.canceled()) {
        result =
            absl::AbortedError(kv::StrCat("etcd cancelled the watch: ", response.cancel_reason()));
        break;
      }
      HandleEvents(response, next_revision);
    }
  }
  ctx.TryCancel();
  grpc::Status finish = stream->Finish();
  UntrackContext(&watch_ctx_);
  if (!finish.ok() && finish.error_code() != grpc::StatusCode::CANCELLED) {
    result = EtcdError(finish, "watch", options_.endpoint);
  }
  return result;
}

void EtcdMembership::HandleEvents(const etcdserverpb::WatchResponse& response,
                                  int64_t* next_revision) {
  if (response.events_size() == 0) return;
  std::vector<NodeInfo> upserts;
  std::vector<std::string> removals;
  for (const mvccpb::Event& event : response.events()) {
    const mvccpb::KeyValue& record = event.kv();
    *next_revision = std::max(*next_revision, record.mod_revision() + 1);
    if (!absl::StartsWith(record.key(), options_.prefix)) continue;
    std::string id = record.key().substr(options_.prefix.size());
    if (event.type() == mvccpb::Event::DELETE) {
      removals.push_back(std::move(id));
      continue;
    }
    NodeInfo node;
    if (!node.ParseFromString(record.value()) || node.node_id() != id) {
      kv::log::Warn("etcd_member_record_invalid", "key", record.key());
      continue;
    }
    upserts.push_back(std::move(node));
  }
  Apply(std::move(upserts), std::move(removals));
}

// ---- registration and keep-alive ------------------------------------------------------------

absl::StatusOr<int64_t> EtcdMembership::Grant() {
  etcdserverpb::LeaseGrantRequest request;
  request.set_ttl(absl::ToInt64Seconds(absl::Ceil(options_.ttl, absl::Seconds(1))));
  etcdserverpb::LeaseGrantResponse response;
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  grpc::Status s = lease_->LeaseGrant(&ctx, request, &response);
  if (!s.ok()) return EtcdError(s, "lease grant", options_.endpoint);
  if (!response.error().empty() || response.id() == 0) {
    return kv::MarkRetryable(absl::UnavailableError(
        kv::StrCat("etcd lease grant at ", options_.endpoint, " failed: ", response.error())));
  }
  return response.id();
}

absl::Status EtcdMembership::Put(const NodeInfo& self, int64_t lease) {
  etcdserverpb::PutRequest request;
  request.set_key(options_.prefix + self.node_id());
  request.set_value(self.SerializeAsString());
  request.set_lease(lease);
  etcdserverpb::PutResponse response;
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  grpc::Status s = kv_->Put(&ctx, request, &response);
  if (!s.ok()) return EtcdError(s, "put", options_.endpoint);
  return absl::OkStatus();
}

absl::Status EtcdMembership::GrantAndPut(const NodeInfo& self) {
  int64_t lease;
  {
    kv::MutexLock lock(&mu_);
    lease = lease_id_;
  }
  if (lease != 0) {
    absl::Status st = Put(self, lease);
    if (st.ok()) return st;
    // etcd answers NOT_FOUND for a lease that expired meanwhile: start over with a new one.
    if (st.code() != absl::StatusCode::kNotFound) return st;
  }
  ASSIGN_OR_RETURN(lease, Grant());
  RETURN_IF_ERROR(Put(self, lease));
  kv::MutexLock lock(&mu_);
  lease_id_ = lease;
  return absl::OkStatus();
}

absl::Status EtcdMembership::Register(const NodeInfo& self) {
  if (self.node_id().empty() || absl::StrContains(self.node_id(), '/')) {
    return absl::InvalidArgumentError(kv::StrCat("etcd membership: node_id '", self.node_id(),
                                                 "' must be non-empty and without '/'"));
  }
  {
    kv::MutexLock register_lock(&register_mu_);
    {
      kv::MutexLock lock(&mu_);
      if (closing_) return absl::FailedPreconditionError("etcd membership: already closed");
    }
    RETURN_IF_ERROR(GrantAndPut(self));
    kv::MutexLock lock(&mu_);
    self_ = self;
  }
  Apply({self}, {});
  kv::MutexLock threads(&threads_mu_);
  kv::MutexLock lock(&mu_);
  if (!closing_ && !keepalive_thread_.joinable()) {
    keepalive_thread_ = std::thread([this] { KeepAliveLoop(); });
  }
  kv::log::Info("etcd_member_registered", "node_id", self.node_id(), "lease", lease_id_);
  return absl::OkStatus();
}

void EtcdMembership::KeepAliveLoop() {
  while (true) {
    int64_t lease;
    NodeInfo self;
    {
      kv::MutexLock lock(&mu_);
      if (closing_) return;
      lease = lease_id_;
      self = *self_;
    }
    if (lease == 0) {
      absl::Status st;
      {
        kv::MutexLock register_lock(&register_mu_);
        st = GrantAndPut(self);
      }
      if (st.ok()) {
        kv::log::Info("etcd_member_reregistered", "node_id", self.node_id());
      } else if (!SleepUnlessClosing(options_.retry_interval)) {
        return;
      }
      continue;
    }
    absl::Status st = KeepAliveStream(lease);
    if (st.code() == absl::StatusCode::kNotFound) {
      kv::log::Warn("etcd_lease_expired", "node_id", self.node_id(), "lease", lease);
      kv::MutexLock lock(&mu_);
      if (lease_id_ == lease) lease_id_ = 0;
      continue;
    }
    if (!SleepUnlessClosing(options_.retry_interval)) return;
  }
}

absl::Status EtcdMembership::KeepAliveStream(int64_t lease) {
  grpc::ClientContext ctx;
  if (!TrackContext(&keepalive_ctx_, &ctx)) return absl::CancelledError("closing");
  auto stream = lease_->LeaseKeepAlive(&ctx);
  const absl::Duration interval = std::max(options_.ttl / 3, absl::Milliseconds(100));
  absl::Status result = absl::UnavailableError("etcd closed the keep-alive stream");
  while (true) {
    etcdserverpb::LeaseKeepAliveRequest request;
    request.set_id(lease);
    etcdserverpb::LeaseKeepAliveResponse response;
    if (!stream->Write(request) || !stream->Read(&response)) break;
    if (response.ttl() <= 0) {
      result = absl::NotFoundError(kv::StrCat("etcd lease ", lease, " expired"));
      break;
    }
    if (!SleepUnlessClosing(interval)) break;
  }
  ctx.TryCancel();
  grpc::Status finish = stream->Finish();
  UntrackContext(&keepalive_ctx_);
  if (result.code() == absl::StatusCode::kUnavailable && !finish.ok() &&
      finish.error_code() != grpc::StatusCode::CANCELLED) {
    result = EtcdError(finish, "lease keep-alive", options_.endpoint);
  }
  return result;
}

void EtcdMembership::Revoke(int64_t lease) {
  etcdserverpb::LeaseRevokeRequest request;
  request.set_id(lease);
  etcdserverpb::LeaseRevokeResponse response;
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  grpc::Status s = lease_->LeaseRevoke(&ctx, request, &response);
  if (!s.ok()) {
    kv::log::Warn("etcd_lease_revoke_failed", "lease", lease, "status",
                  EtcdError(s, "lease revoke", options_.endpoint).ToString());
  }
}

// ---- lifecycle ------------------------------------------------------------------------------

bool EtcdMembership::SleepUnlessClosing(absl::Duration d) {
  kv::MutexLock lock(&mu_);
  return !mu_.AwaitWithTimeout(kv::Condition(&closing_), d);
}

bool EtcdMembership::TrackContext(grpc::ClientContext** slot, grpc::ClientContext* ctx) {
  kv::MutexLock lock(&mu_);
  if (closing_) return false;
  *slot = ctx;
  return true;
}

void EtcdMembership::UntrackContext(grpc::ClientContext** slot) {
  kv::MutexLock lock(&mu_);
  *slot = nullptr;
}

void EtcdMembership::Close() {
  {
    kv::MutexLock lock(&mu_);
    if (closing_) return;
    closing_ = true;
    if (watch_ctx_ != nullptr) watch_ctx_->TryCancel();
    if (keepalive_ctx_ != nullptr) keepalive_ctx_->TryCancel();
  }
  {
    kv::MutexLock threads(&threads_mu_);
    if (watch_thread_.joinable()) watch_thread_.join();
    if (keepalive_thread_.joinable()) keepalive_thread_.join();
  }
  kv::MutexLock register_lock(&register_mu_);
  int64_t lease;
  {
    kv::MutexLock lock(&mu_);
    lease = lease_id_;
    lease_id_ = 0;
  }
  if (lease != 0 && options_.revoke_on_close) Revoke(lease);
  kv::log::Info("etcd_membership_closed", "endpoint", options_.endpoint, "revoked",
                lease != 0 && options_.revoke_on_close);
}

}  // namespace kv::cluster
