# Finds kvstrata's dependencies: the Debian 12 packages scripts/setup installs, plus the
# optional CUDA toolkit (nvcc, cuBLAS, NCCL).
find_package(Threads REQUIRED)
find_package(PkgConfig REQUIRED)

# ---- core (needed by every build flavour) ----
find_package(absl CONFIG REQUIRED)
find_package(OpenSSL REQUIRED)
pkg_check_modules(XXHASH REQUIRED IMPORTED_TARGET libxxhash)
find_package(fmt CONFIG REQUIRED)
find_package(spdlog CONFIG REQUIRED)
find_package(yaml-cpp CONFIG REQUIRED)
find_package(nlohmann_json CONFIG REQUIRED)
pkg_check_modules(HTTPLIB REQUIRED IMPORTED_TARGET cpp-httplib)
if(KVSTRATA_BUILD_TESTS)
  find_package(GTest CONFIG REQUIRED)
endif()

# ---- kernels/model ----
if(NOT KVSTRATA_FUZZ_ONLY)
  pkg_check_modules(OPENBLAS REQUIRED IMPORTED_TARGET openblas)
endif()

# ---- the service (not in GPU-only or fuzz-only builds) ----
if(NOT KVSTRATA_GPU_ONLY AND NOT KVSTRATA_FUZZ_ONLY)
  find_package(Protobuf REQUIRED)
  find_package(gRPC CONFIG REQUIRED)
  find_program(GRPC_CPP_PLUGIN grpc_cpp_plugin REQUIRED)
  find_package(RocksDB CONFIG REQUIRED)
  # TSAN builds link the shared library: RocksDB is not TSAN-instrumented, and only a
  # separate module can be named in tsan.supp (`called_from_lib`), so that TSAN ignores the
  # memory accesses RocksDB makes through intercepted functions (memcpy, memcmp, free, close)
  # while it synchronizes with its own uninstrumented atomics. See scripts/tsan-check.
  if(KVSTRATA_TSAN)
    set(KVSTRATA_ROCKSDB RocksDB::rocksdb-shared)
  else()
    set(KVSTRATA_ROCKSDB RocksDB::rocksdb)
  endif()
  pkg_check_modules(UCX REQUIRED IMPORTED_TARGET ucx)
  pkg_check_modules(URING REQUIRED IMPORTED_TARGET liburing)
  # KV events (kvstore/kv_events.h): ZMQ PUB/ROUTER sockets through cppzmq, msgpack-c's C
  # packer (scripts/setup installs libzmq3-dev, cppzmq-dev, libmsgpack-dev).
  pkg_check_modules(ZMQ REQUIRED IMPORTED_TARGET libzmq)
  pkg_check_modules(MSGPACKC REQUIRED IMPORTED_TARGET msgpack)
  find_package(benchmark CONFIG REQUIRED)
  # Optional: `kvstrata bench store` talks to Redis through hiredis (scripts/setup installs
  # libhiredis-dev); without it the bench builds and its Redis rows fail with a message.
  pkg_check_modules(HIREDIS IMPORTED_TARGET hiredis)
endif()

# ---- CUDA (AUTO / ON / OFF) ----
set(KVSTRATA_CUDA_ENABLED OFF)
if(NOT KVSTRATA_WITH_CUDA STREQUAL "OFF" AND NOT KVSTRATA_FUZZ_ONLY)
  include(CheckLanguage)
  if(NOT DEFINED CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      # Hopper (H100/H200) is what the project's GPU machines are; override for other cards.
      set(CMAKE_CUDA_ARCHITECTURES 90)
    endif()
    enable_language(CUDA)
    # CMake 3.25 (Debian 12) has no CUDA_STANDARD 20 mapping for nvcc 13, and an unset
    # CUDA_STANDARD falls back to CXX_STANDARD (20), which it then rejects. So every CUDA
    # target claims 17 with an empty flag for it, and the real level is passed to nvcc
    # directly (nvcc 12+ accepts -std=c++20).
    string(APPEND CMAKE_CUDA_FLAGS " -std=c++20")
    set(CMAKE_CUDA_STANDARD 17)
    set(CMAKE_CUDA17_STANDARD_COMPILE_OPTION "")
    set(CMAKE_CUDA17_EXTENSION_COMPILE_OPTION "")
    find_package(CUDAToolkit REQUIRED)
    set(KVSTRATA_CUDA_ENABLED ON)
  elseif(KVSTRATA_WITH_CUDA STREQUAL "ON")
    message(FATAL_ERROR "KVSTRATA_WITH_CUDA=ON but no CUDA compiler (nvcc) was found")
  endif()
endif()
message(STATUS "kvstrata: CUDA kernels ${KVSTRATA_CUDA_ENABLED}")

# cuda_fp8.h is usable from host code even when CUDA kernels are off: the FP8 codec's
# exhaustive bit-exactness test compiles against the header's host emulation.
find_path(KVSTRATA_CUDA_FP8_INCLUDE cuda_fp8.h HINTS /usr/local/cuda/include ${CUDAToolkit_INCLUDE_DIRS})

# ---- NCCL (AUTO / ON / OFF) ----
set(KVSTRATA_NCCL_ENABLED OFF)
if(NOT KVSTRATA_WITH_NCCL STREQUAL "OFF" AND KVSTRATA_CUDA_ENABLED AND NOT KVSTRATA_GPU_ONLY)
  find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} /usr/local/cuda/include)
  find_library(NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR} /usr/local/cuda/lib64)
  if(NCCL_INCLUDE_DIR AND NCCL_LIBRARY)
    add_library(kv_nccl_imported INTERFACE)
    target_include_directories(kv_nccl_imported INTERFACE ${NCCL_INCLUDE_DIR})
    target_link_libraries(kv_nccl_imported INTERFACE ${NCCL_LIBRARY} CUDA::cudart)
    add_library(NCCL::nccl ALIAS kv_nccl_imported)
    set(KVSTRATA_NCCL_ENABLED ON)
  endif()
endif()
if(KVSTRATA_WITH_NCCL STREQUAL "ON" AND NOT KVSTRATA_NCCL_ENABLED)
  message(FATAL_ERROR "KVSTRATA_WITH_NCCL=ON but CUDA or NCCL (nccl.h, libnccl) was not found")
endif()
message(STATUS "kvstrata: NCCL transport ${KVSTRATA_NCCL_ENABLED}")
