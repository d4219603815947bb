#include "cluster/client.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include <chrono>
#include <cstdio>

#include "cluster/grpc_status.h"
#include "cluster/proto_convert.h"
#include "cluster/transport_security.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "model/tokenizer.h"

namespace kv::cluster {

namespace pb = ::kvstrata::v1;

ClusterClient::ClusterClient(std::shared_ptr<grpc::Channel> channel, std::string token)
    : channel_(std::move(channel)),
      stub_(pb::Cluster::NewStub(channel_)),
      token_(std::move(token)) {}

absl::StatusOr<std::unique_ptr<ClusterClient>> ClusterClient::Connect(
    const std::string& address, std::string token, absl::Duration connect_timeout) {
  if (address.empty()) return absl::InvalidArgumentError("no server address (--addr=HOST:PORT)");
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  auto channel = NewChannel(address, args);
  if (!channel->WaitForConnected(absl::ToChronoTime(absl::Now() + connect_timeout))) {
    return MarkRetryable(
        absl::UnavailableError(StrCat("no kvstrata server answered at ", address, " within ",
                                      absl::FormatDuration(connect_timeout))));
  }
  return std::unique_ptr<ClusterClient>(new ClusterClient(std::move(channel), std::move(token)));
}

void ClusterClient::Prepare(grpc::ClientContext* ctx, absl::Duration timeout) const {
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  if (!token_.empty()) ctx->AddMetadata("authorization", StrCat("Bearer ", token_));
}

absl::StatusOr<GenerateOutcome> ClusterClient::Generate(
    const pb::GenerateRequest& request, absl::Duration timeout,
    const std::function<void(const pb::GeneratedTokens&)>& on_tokens) {
  grpc::ClientContext ctx;
  Prepare(&ctx, timeout);
  const absl::Time start = absl::Now();
  std::unique_ptr<grpc::ClientReader<pb::GenerateResponse>> reader = stub_->Generate(&ctx, request);
  GenerateOutcome out;
  pb::GenerateResponse msg;
  bool accepted = false, done = false;
  absl::Status contract;
  while (reader->Read(&msg)) {
    if (done && contract.ok()) contract = absl::InternalError("event after the `done` event");
    switch (msg.event_case()) {
      case pb::GenerateResponse::kAccepted:
        accepted = true;
        out.request_id = msg.accepted().request_id();
        out.plan = msg.accepted().cost();
        break;
      case pb::GenerateResponse::kTokens: {
        const pb::GeneratedTokens& t = msg.tokens();
        if (t.first_index() != out.tokens.size() && contract.ok()) {
          contract = absl::InternalError(
              StrCat("tokens event starts at ", t.first_index(), ", expected ", out.tokens.size()));
        }
        if (out.tokens.empty()) out.client_ttft = absl::Now() - start;
        out.tokens.insert(out.tokens.end(), t.token_ids().begin(), t.token_ids().end());
        out.text += t.text();
        if (on_tokens) on_tokens(t);
        break;
      }
      case pb::GenerateResponse::kDone:
        done = true;
        out.finish = msg.done().finish_reason();
        out.stats = msg.done().stats();
        break;
      default:
        break;
    }
  }
  RETURN_IF_ERROR(FromGrpcStatus(reader->Finish()));
  RETURN_IF_ERROR(contract);
  if (!accepted || !done) {
    return absl::InternalError("Generate stream ended without its `accepted`/`done` events");
  }
  return out;
}

absl::StatusOr<pb::LookupResponse> ClusterClient::Lookup(const pb::LookupRequest& request,
                                                         absl::Duration timeout) {
  grpc::ClientContext ctx;
  Prepare(&ctx, timeout);
  pb::LookupResponse resp;
  RETURN_IF_ERROR(FromGrpcStatus(stub_->Lookup(&ctx, request, &resp)));
  return resp;
}

absl::StatusOr<pb::ListNodesResponse> ClusterClient::ListNodes(absl::Duration timeout) {
  grpc::ClientContext ctx;
  Prepare(&ctx, timeout);
  pb::ListNodesResponse resp;
  RETURN_IF_ERROR(FromGrpcStatus(stub_->ListNodes(&ctx, pb::ListNodesRequest(), &resp)));
  return resp;
}

absl::StatusOr<pb::GetStatsResponse> ClusterClient::GetStats(absl::Duration timeout,
                                                             bool all_nodes) {
  grpc::ClientContext ctx;
  Prepare(&ctx, timeout);
  pb::GetStatsRequest req;
  req.set_all_nodes(all_nodes);
  pb::GetStatsResponse resp;
  RETURN_IF_ERROR(FromGrpcStatus(stub_->GetStats(&ctx, req, &resp)));
  return resp;
}

std::string FormatTierHits(const pb::RequestStats& s) {
  if (s.tier_hits_size() == 0) return "none";
  std::string out;
  for (const pb::TierHits& h : s.tier_hits()) {
    if (!out.empty()) out += ", ";
    out += StrCat(TierProtoName(h.tier()), " ", h.pages(), "p/", h.tokens(), "t");
  }
  return out;
}

std::string FormatStats(const pb::RequestStats& s) {
  auto ms = [](const google::protobuf::Duration& d) {
    return absl::ToDoubleMilliseconds(FromProto(d));
  };
  const std::string pool =
      s.pool_transport() == pb::TRANSPORT_KIND_UNSPECIFIED
          ? ""
          : fmt::format("cached pages came from the pool over {}\n",
                        s.pool_transport() == pb::TRANSPORT_KIND_UCX    ? "UCX"
                        : s.pool_transport() == pb::TRANSPORT_KIND_GRPC ? "gRPC (fallback)"
                                                                        : "in-process");
  // What the cached prefix cost to load, and the path its bytes took; nothing when the
  // prompt loaded no cached token (bytes read for pages that were then not used are not
  // "loaded").
  const std::string path = s.pool_transport() == pb::TRANSPORT_KIND_UCX    ? "UCX"
                           : s.pool_transport() == pb::TRANSPORT_KIND_GRPC ? "gRPC"
                           : s.pool_transport() == pb::TRANSPORT_KIND_INPROC ||
                                   s.transport() == pb::TRANSPORT_KIND_INPROC
                               ? "in-process"
                               : "over the network";
  const std::string loaded = s.cached_tokens() == 0
                                 ? std::string("loaded nothing")
                                 : fmt::format("loaded {} bytes ({})", s.bytes_transferred(), path);
  const std::string handoff =
      s.handoff_bytes() == 0
          ? ""
          : fmt::format(
                "handoff: {} bytes prefill->decode, {:.2f} ms not overlapped with compute\n",
                s.handoff_bytes(), ms(s.handoff_time()));
  return pool + handoff +
         fmt::format(
             "TTFT {:.2f} ms, total {:.2f} ms (load {:.2f} ms, prefill {:.2f} ms, decode {:.2f} "
             "ms)\n"
             "prompt {} tokens: {} cached, {} recomputed; {} generated; tier hits: {}\n"
             "{}, published {} pages{}\n"
             "cost model: {} ({})\n",
             ms(s.ttft()), ms(s.total_time()), ms(s.load_time()), ms(s.prefill_time()),
             ms(s.decode_time()), s.prompt_tokens(), s.cached_tokens(), s.recomputed_tokens(),
             s.output_tokens(), FormatTierHits(s), loaded, s.published_pages(),
             s.queued_pages() == 0 ? std::string()
                                   : fmt::format(" (+{} queued for write-back)", s.queued_pages()),
             pb::CacheDecision_Name(s.cost().decision()), s.cost().reason());
}

namespace {

absl::StatusOr<pb::CachePolicy> ParsePolicy(const std::string& p) {
  if (p == "auto") return pb::CACHE_POLICY_AUTO;
  if (p == "force-load") return pb::CACHE_POLICY_FORCE_LOAD;
  if (p == "force-recompute") return pb::CACHE_POLICY_FORCE_RECOMPUTE;
  if (p == "bypass") return pb::CACHE_POLICY_BYPASS;
  return absl::InvalidArgumentError(
      StrCat("--cache-policy must be auto, force-load, force-recompute or bypass, got '", p, "'"));
}

absl::StatusOr<pb::GenerateRequest> BuildRequest(const GenerateClientFlags& f) {
  if (f.prompt.empty()) return absl::InvalidArgumentError("--prompt=TEXT is required");
  if (f.max_tokens <= 0 || f.max_tokens > 1 << 20) {
    return absl::InvalidArgumentError("--max-tokens must be in 1..1048576");
  }
  if (f.seed < 0) return absl::InvalidArgumentError("--seed must be >= 0");
  if (f.shared_prefix_tokens < 0) {
    return absl::InvalidArgumentError("--shared-prefix-tokens must be >= 0");
  }
  if (f.timeout <= absl::ZeroDuration()) return absl::InvalidArgumentError("--timeout must be > 0");
  pb::GenerateRequest r;
  r.mutable_prompt()->set_text(f.prompt);
  r.set_session_id(f.session);
  if (f.retention > absl::ZeroDuration()) SetDuration(f.retention, r.mutable_retention_ttl());
  r.mutable_sampling()->set_max_new_tokens(static_cast<uint32_t>(f.max_tokens));
  r.mutable_sampling()->set_temperature(static_cast<float>(f.temperature));
  r.mutable_sampling()->set_top_p(static_cast<float>(f.top_p));
  r.mutable_sampling()->set_seed(static_cast<uint64_t>(f.seed));
  r.set_shared_prefix_tokens(static_cast<uint32_t>(f.shared_prefix_tokens));
  ASSIGN_OR_RETURN(pb::CachePolicy policy, ParsePolicy(f.cache_policy));
  r.set_cache_policy(policy);
  return r;
}

}  // namespace

int RunGenerateClient(const GenerateClientFlags& f) {
  absl::StatusOr<pb::GenerateRequest> req = BuildRequest(f);
  if (!req.ok()) {
    std::fprintf(stderr, "kvstrata generate: %s\n", std::string(req.status().message()).c_str());
    return 2;
  }
  absl::StatusOr<GenerateOutcome> out;
  absl::StatusOr<std::unique_ptr<ClusterClient>> client = ClusterClient::Connect(f.addr, f.token);
  if (client.ok()) {
    const bool raw = f.raw;
    // The token ids, shown exactly as local generation shows them (the text field is
    // UTF-8 for clients, so bytes that are not valid UTF-8 are replaced there).
    out = (*client)->Generate(*req, f.timeout, [raw](const pb::GeneratedTokens& t) {
      std::string text;
      for (uint32_t id : t.token_ids()) {
        text += model::ByteTokenizer::Show(static_cast<int32_t>(id), raw);
      }
      std::fwrite(text.data(), 1, text.size(), stdout);
      std::fflush(stdout);
    });
  } else {
    out = client.status();
  }
  if (!out.ok()) {
    std::fprintf(stderr, "\nkvstrata generate: %s: %s\n",
                 absl::StatusCodeToString(out.status().code()).c_str(),
                 std::string(out.status().message()).c_str());
    return 1;
  }
  std::printf("\n---\nrequest %s, finished: %s\n%s", out->request_id.c_str(),
              pb::FinishReason_Name(out->finish).c_str(), FormatStats(out->stats).c_str());
  return 0;
}

}  // namespace kv::cluster
