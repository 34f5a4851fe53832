# FastnnCuda.cmake: the CUDA/cuDNN backend, included by the top-level CMakeLists.txt when
# -DFASTNN_CUDA=ON.
#
# Provides the target fastnn::cuda (INTERFACE): fastnn::fastnn + FASTNN_WITH_CUDA=1 + the small
# static library of fastnn's kernels (include/fastnn/backend/cuda/kernels.cu, compiled by nvcc) +
# CUDA::cudart, CUDA::cublas and cuDNN 9.
#
# cuDNN is found by fastnnFindCudnn.cmake (search order and overrides there).
#
# Installed (cmake --install) with the export set fastnnCudaTargets: the static kernel library,
# fastnn::cuda and fastnnFindCudnn.cmake, so that an installed fastnn gives
# find_package(fastnn REQUIRED COMPONENTS cuda) -> fastnn::cuda.
#
# GPU architectures: CMAKE_CUDA_ARCHITECTURES defaults to "80;90" (A100, H100/H200); pass
# -DCMAKE_CUDA_ARCHITECTURES=... to change it.

if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES OR CMAKE_CUDA_ARCHITECTURES STREQUAL "")
  set(CMAKE_CUDA_ARCHITECTURES "80;90" CACHE STRING "GPU architectures of the fastnn kernels")
endif()
if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX} AND EXISTS /usr/local/cuda/bin/nvcc)
  set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
endif()
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)

# ---- cuDNN: the imported target fastnn_cudnn (the same file is installed for find_package) ------
set(FASTNN_CUDNN_IMPORT_GLOBAL ON)
include(${CMAKE_CURRENT_LIST_DIR}/fastnnFindCudnn.cmake)
if(NOT FASTNN_CUDNN_FOUND)
  message(FATAL_ERROR "FASTNN_CUDA: ${FASTNN_CUDNN_REASON}")
endif()
message(STATUS "fastnn: CUDA ${CUDAToolkit_VERSION}, cuDNN ${FASTNN_CUDNN_VERSION} (${CUDNN_LIBRARY}, headers ${CUDNN_INCLUDE_DIR}), "
               "architectures ${CMAKE_CUDA_ARCHITECTURES}")

# ---- fastnn's kernels: a small static library compiled by nvcc -------------------------------
add_library(fastnn_cuda_kernels STATIC ${PROJECT_SOURCE_DIR}/include/fastnn/backend/cuda/kernels.cu)
target_include_directories(fastnn_cuda_kernels PRIVATE ${PROJECT_SOURCE_DIR}/include)
set_target_properties(fastnn_cuda_kernels PROPERTIES
  CUDA_STANDARD 17 CUDA_STANDARD_REQUIRED ON POSITION_INDEPENDENT_CODE ON
  CUDA_ARCHITECTURES "${CMAKE_CUDA_ARCHITECTURES}")
target_compile_options(fastnn_cuda_kernels PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra --expt-relaxed-constexpr>
  $<$<AND:$<COMPILE_LANGUAGE:CUDA>,$<CONFIG:Release>>:-O3>)
target_link_libraries(fastnn_cuda_kernels PUBLIC CUDA::cudart)

# ---- fastnn::cuda ------------------------------------------------------------------------------
add_library(fastnn_cuda INTERFACE)
add_library(fastnn::cuda ALIAS fastnn_cuda)
target_link_libraries(fastnn_cuda INTERFACE fastnn::fastnn fastnn_cuda_kernels CUDA::cudart CUDA::cublas fastnn_cudnn)
target_compile_definitions(fastnn_cuda INTERFACE FASTNN_WITH_CUDA=1)
# cuDNN 9 loads its sub-libraries (libcudnn_adv, libcudnn_engines_*) at run time: put its
# directory on the binaries' search path (RPATH rather than RUNPATH, so that it also applies to
# libraries loaded by cuDNN itself). Where cuDNN is not in a system directory this is what lets
# the tests and examples run without LD_LIBRARY_PATH.
# (The installed fastnnConfig.cmake adds the same option for the cuDNN it finds on the user's machine.)
target_link_options(fastnn_cuda INTERFACE
  "$<BUILD_INTERFACE:LINKER:-rpath,${FASTNN_CUDNN_LIBRARY_DIR}>" "$<BUILD_INTERFACE:LINKER:--disable-new-dtags>")

set_target_properties(fastnn_cuda_kernels PROPERTIES EXPORT_NAME cuda_kernels)
set_target_properties(fastnn_cuda PROPERTIES EXPORT_NAME cuda)
include(GNUInstallDirs)
install(TARGETS fastnn_cuda_kernels fastnn_cuda EXPORT fastnnCudaTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(EXPORT fastnnCudaTargets NAMESPACE fastnn:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/fastnn)
install(FILES ${CMAKE_CURRENT_LIST_DIR}/fastnnFindCudnn.cmake DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/fastnn)
