// InProcWorkerClient: the WorkerClient (cluster/worker_client.h) of the embedded
// `--role=all` node: the prefill::PrefillWorker and decode::DecodeSession libraries of this
// process, with the KV handed off over the in-process transport. The router drives them
// exactly as it drives remote workers, so both modes run one code path.
//
// A decode call's turn loop runs on `decode_threads` (the router thread consumes its tokens
// with Next()); a call destroyed before its turn ended cancels it and waits for it.
//
// Thread-safety: safe for concurrent calls. Not owned: the prefill worker, the decode context
// and the pool of threads, which must outlive the client and its calls.
#pragma once

#include <memory>

#include "cluster/worker_client.h"
#include "core/thread_pool.h"

namespace kv::cluster {

// `prefill` may be null (a node without the prefill role: Prefill() is Unavailable).
std::unique_ptr<WorkerClient> NewInProcWorkerClient(prefill::PrefillWorker* prefill,
                                                    const decode::DecodeContext* decode,
                                                    ThreadPool* decode_threads);

}  // namespace kv::cluster
