// GrpcWorkerClient: a WorkerClient (cluster/worker_client.h) over the kvstrata.v1.Worker
// service of one worker process. Calls carry the request's deadline and the node credential
// acting for the request's tenant (`authorization: Bearer <service token>` and
// `x-kvstrata-tenant`; cluster/tenants.h): the Worker service serves nodes only.
//
// Thread-safety: safe for concurrent calls; a DecodeCall is used by one thread, except
// Cancel(). The channel is shared and owned by the client's creator.
#pragma once

#include <memory>
#include <string>

#include <grpcpp/channel.h>

#include "cluster/worker_client.h"
#include "core/clock.h"
#include "kvstore/block_key.h"

namespace kv::cluster {

// `key_params`: the key space requests are made in; `node_id` names the worker in errors and
// destinations; `service_token` is the cluster's node credential (empty: none, a cluster
// without tokens); `clock` (not owned, null: Clock::Real()) is the one call deadlines are read
// on.
std::unique_ptr<WorkerClient> NewGrpcWorkerClient(std::shared_ptr<grpc::Channel> channel,
                                                  KeyParams key_params, std::string node_id,
                                                  std::string service_token,
                                                  Clock* clock = nullptr);

}  // namespace kv::cluster
