#include "cluster/grpc_probe.h"

#include <algorithm>
#include <memory>
#include <utility>

#include <grpcpp/client_context.h>
#include <grpcpp/completion_queue.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/support/byte_buffer.h>

#include "cluster/grpc_status.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "proto/grpc/health/v1/health.grpc.pb.h"
#include "proto/grpc/reflection/reflection_wire.pb.h"

namespace kv::cluster {
namespace {

namespace wire = kvstrata::grpcwire::reflection;

constexpr char kReflectionMethod[] =
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";

void SetDeadline(grpc::ClientContext* ctx, absl::Duration timeout) {
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
}

// Waits for the completion of `tag` on `cq`. The context's deadline bounds every operation;
// the extra second only guards against a completion that never arrives.
bool AwaitTag(grpc::CompletionQueue* cq, void* tag, absl::Time deadline) {
  void* got = nullptr;
  bool ok = false;
  const auto status = cq->AsyncNext(&got, &ok, absl::ToChronoTime(deadline + absl::Seconds(1)));
  return status == grpc::CompletionQueue::GOT_EVENT && got == tag && ok;
}

void DrainQueue(grpc::CompletionQueue* cq) {
  cq->Shutdown();
  void* tag = nullptr;
  bool ok = false;
  while (cq->Next(&tag, &ok)) {
  }
}

// One request/response exchange on the bidirectional reflection stream, through a generic
// stub carrying the wire-compatible messages of reflection_wire.proto.
absl::StatusOr<wire::ServerReflectionResponse> ReflectOnce(
    grpc::Channel* channel, const wire::ServerReflectionRequest& request, absl::Duration timeout) {
  grpc::GenericStub stub(std::shared_ptr<grpc::ChannelInterface>(
      channel, [](grpc::ChannelInterface*) {}));  // not owned
  grpc::ClientContext ctx;
  const absl::Time deadline = absl::Now() + timeout;
  ctx.set_deadline(absl::ToChronoTime(deadline));
  grpc::CompletionQueue cq;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call =
      stub.PrepareCall(&ctx, kReflectionMethod, &cq);
  int tags[5];
  grpc::Slice out_slice(request.SerializeAsString());
  grpc::ByteBuffer out_buf(&out_slice, 1);
  grpc::ByteBuffer in_buf;
  grpc::Status rpc_status;
  bool ok = true;
  call->StartCall(&tags[0]);
  ok = ok && AwaitTag(&cq, &tags[0], deadline);
  if (ok) call->Write(out_buf, &tags[1]);
  ok = ok && AwaitTag(&cq, &tags[1], deadline);
  if (ok) call->WritesDone(&tags[2]);
  ok = ok && AwaitTag(&cq, &tags[2], deadline);
  bool read_ok = false;
  if (ok) {
    call->Read(&in_buf, &tags[3]);
    read_ok = AwaitTag(&cq, &tags[3], deadline);
  }
  if (!ok || !read_ok) ctx.TryCancel();
  call->Finish(&rpc_status, &tags[4]);
  const bool finished = AwaitTag(&cq, &tags[4], deadline);
  DrainQueue(&cq);
  if (finished && !rpc_status.ok()) return FromGrpcStatus(rpc_status);
  if (!read_ok) {
    return kv::MarkRetryable(absl::DeadlineExceededError(
        "server reflection: no response before the deadline (is the server up?)"));
  }
  std::vector<grpc::Slice> slices;
  grpc::Status dump = in_buf.Dump(&slices);
  std::string bytes;
  for (const grpc::Slice& s : slices)
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  wire::ServerReflectionResponse response;
  if (!dump.ok() || !response.ParseFromString(bytes)) {
    return absl::DataLossError("server reflection: response does not parse");
  }
  if (response.has_error_response()) {
    return absl::Status(
        static_cast<absl::StatusCode>(response.error_response().error_code()),
        kv::StrCat("server reflection: ", response.error_response().error_message()));
  }
  return response;
}

}  // namespace

absl::StatusOr<grpc::health::v1::HealthCheckResponse::ServingStatus> CheckHealth(
    grpc::Channel* channel, const std::string& service, absl::Duration timeout) {
  auto stub = grpc::health::v1::Health::NewStub(std::shared_ptr<grpc::ChannelInterface>(
      channel, [](grpc::ChannelInterface*) {}));  // not owned
  grpc::ClientContext ctx;
  SetDeadline(&ctx, timeout);
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  RETURN_IF_ERROR(FromGrpcStatus(stub->Check(&ctx, request, &response)));
  return response.status();
}

absl::StatusOr<std::vector<std::string>> ListServicesByReflection(grpc::Channel* channel,
                                                                  absl::Duration timeout) {
  wire::ServerReflectionRequest request;
  request.set_list_services("*");
  ASSIGN_OR_RETURN(wire::ServerReflectionResponse response, ReflectOnce(channel, request, timeout));
  if (!response.has_list_services_response()) {
    return absl::DataLossError("server reflection: list_services got another response kind");
  }
  std::vector<std::string> names;
  for (const auto& s : response.list_services_response().service()) names.push_back(s.name());
  std::sort(names.begin(), names.end());
  return names;
}

absl::StatusOr<std::vector<std::string>> FileDescriptorsBySymbol(grpc::Channel* channel,
                                                                 const std::string& symbol,
                                                                 absl::Duration timeout) {
  wire::ServerReflectionRequest request;
  request.set_file_containing_symbol(symbol);
  ASSIGN_OR_RETURN(wire::ServerReflectionResponse response, ReflectOnce(channel, request, timeout));
  if (!response.has_file_descriptor_response()) {
    return absl::DataLossError(
        "server reflection: file_containing_symbol got another response kind");
  }
  const auto& files = response.file_descriptor_response().file_descriptor_proto();
  return std::vector<std::string>(files.begin(), files.end());
}

}  // namespace kv::cluster
