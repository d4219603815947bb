// Thin CUDA runtime shims for the device and host tiers (compiled from cuda_memory.cu only
// when the build has CUDA; callers guard on KVSTRATA_HAVE_CUDA). They take raw pointers and
// return the cudaError_t value as an int, so no CUDA header leaks into C++ code; the status
// conversion happens in slab_tier.cc. Thread-safe as the CUDA runtime is.
#pragma once

#include <cstddef>

namespace kv::cuda_memory {

int DeviceCount();                     // 0 when no device or no driver
int Malloc(void** ptr, size_t bytes);  // cudaMalloc
int Free(void* ptr);                   // cudaFree
int CopyToDevice(void* dst, const void* src, size_t bytes);
int CopyToHost(void* dst, const void* src, size_t bytes);
int HostRegister(void* ptr, size_t bytes);  // cudaHostRegister (portable)
int HostUnregister(void* ptr);
const char* ErrorString(int err);

}  // namespace kv::cuda_memory
