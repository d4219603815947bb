// The module edge between CUDA error codes and absl::Status (STYLE.md "Kernels": kernels
// return cudaError_t; callers outside kernels/ see Status). Header-only, pure functions.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace kv::kernels {

// OK for cudaSuccess. Invalid values map to InvalidArgument; out-of-memory to
// ResourceExhausted; everything else (launch failures, illegal addresses, a lost device)
// to Internal. The message names `what` and CUDA's error name and text.
inline absl::Status CudaStatus(cudaError_t err, std::string_view what) {
  if (err == cudaSuccess) return absl::OkStatus();
  const std::string msg = absl::StrCat(std::string(what), ": ", cudaGetErrorName(err), " (",
                                       cudaGetErrorString(err), ")");
  if (err == cudaErrorInvalidValue) return absl::InvalidArgumentError(msg);
  if (err == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

inline absl::Status CublasStatus(cublasStatus_t st, std::string_view what) {
  if (st == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  const std::string msg = absl::StrCat(std::string(what), ": cuBLAS status ", static_cast<int>(st));
  if (st == CUBLAS_STATUS_INVALID_VALUE) return absl::InvalidArgumentError(msg);
  if (st == CUBLAS_STATUS_ALLOC_FAILED) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

}  // namespace kv::kernels
