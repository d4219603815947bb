#include <cuda_runtime.h>

#include "kvstore/cuda_memory.h"

namespace kv::cuda_memory {

int DeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
  return n;
}
int Malloc(void** ptr, size_t bytes) { return static_cast<int>(cudaMalloc(ptr, bytes)); }
int Free(void* ptr) { return static_cast<int>(cudaFree(ptr)); }
int CopyToDevice(void* dst, const void* src, size_t bytes) {
  return static_cast<int>(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}
int CopyToHost(void* dst, const void* src, size_t bytes) {
  return static_cast<int>(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}
int HostRegister(void* ptr, size_t bytes) {
  return static_cast<int>(cudaHostRegister(ptr, bytes, cudaHostRegisterPortable));
}
int HostUnregister(void* ptr) { return static_cast<int>(cudaHostUnregister(ptr)); }
const char* ErrorString(int err) { return cudaGetErrorString(static_cast<cudaError_t>(err)); }

}  // namespace kv::cuda_memory
