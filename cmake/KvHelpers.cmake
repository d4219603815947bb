# kv_cc_library / kv_cc_test: one CMake target per folder, unit tests registered by the same
# helper (in the spirit of Abseil's absl_cc_library).
#
#   kv_cc_library(NAME core SRCS a.cc b.cc [CUDA_SRCS k.cu] DEPS absl::status ...)
#     -> static library kv_core, alias kvstrata::core. CUDA_SRCS are compiled only when the
#        build has CUDA enabled (KVSTRATA_CUDA_ENABLED).
#   kv_cc_test(NAME core_test SRCS core_test.cc DEPS kvstrata::core [LABELS gpu slow]
#              [TIMEOUT 120] [ARGS ...] [NO_GTEST_MAIN])
#     -> executable + ctest entry. Links gtest_main unless NO_GTEST_MAIN.

set(KVSTRATA_WARNING_FLAGS
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers>)
if(KVSTRATA_WERROR)
  list(APPEND KVSTRATA_WARNING_FLAGS $<$<COMPILE_LANGUAGE:CXX>:-Werror>)
  list(APPEND KVSTRATA_WARNING_FLAGS $<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings>)
endif()

function(kv_cc_library)
  cmake_parse_arguments(KV "" "NAME" "SRCS;CUDA_SRCS;DEPS" ${ARGN})
  set(_srcs ${KV_SRCS})
  if(KVSTRATA_CUDA_ENABLED)
    list(APPEND _srcs ${KV_CUDA_SRCS})
  endif()
  add_library(kv_${KV_NAME} STATIC ${_srcs})
  add_library(kvstrata::${KV_NAME} ALIAS kv_${KV_NAME})
  target_include_directories(kv_${KV_NAME} PUBLIC ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
  target_link_libraries(kv_${KV_NAME} PUBLIC ${KV_DEPS})
  target_compile_options(kv_${KV_NAME} PRIVATE ${KVSTRATA_WARNING_FLAGS})
  if(KVSTRATA_CUDA_ENABLED AND KV_CUDA_SRCS)
    target_compile_definitions(kv_${KV_NAME} PUBLIC KVSTRATA_HAVE_CUDA=1)
    target_link_libraries(kv_${KV_NAME} PUBLIC CUDA::cudart)
    set_target_properties(kv_${KV_NAME} PROPERTIES CUDA_SEPARABLE_COMPILATION OFF)
  endif()
endfunction()

function(kv_cc_test)
  cmake_parse_arguments(KV "NO_GTEST_MAIN" "NAME;TIMEOUT" "SRCS;CUDA_SRCS;DEPS;LABELS;ARGS" ${ARGN})
  if(NOT KVSTRATA_BUILD_TESTS)
    return()
  endif()
  set(_srcs ${KV_SRCS})
  if(KVSTRATA_CUDA_ENABLED)
    list(APPEND _srcs ${KV_CUDA_SRCS})
  endif()
  add_executable(${KV_NAME} ${_srcs})
  target_link_libraries(${KV_NAME} PRIVATE ${KV_DEPS} GTest::gmock)
  if(NOT KV_NO_GTEST_MAIN)
    target_link_libraries(${KV_NAME} PRIVATE GTest::gtest_main)
  endif()
  target_compile_options(${KV_NAME} PRIVATE ${KVSTRATA_WARNING_FLAGS})
  add_test(NAME ${KV_NAME} COMMAND ${KV_NAME} ${KV_ARGS}
           WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR})
  if(NOT KV_TIMEOUT)
    set(KV_TIMEOUT 300)
  endif()
  set_tests_properties(${KV_NAME} PROPERTIES TIMEOUT ${KV_TIMEOUT}
                       ENVIRONMENT "KVSTRATA_TEST_TMPDIR=${CMAKE_BINARY_DIR}/test-tmp")
  if(KV_LABELS)
    set_tests_properties(${KV_NAME} PROPERTIES LABELS "${KV_LABELS}")
  endif()
endfunction()
