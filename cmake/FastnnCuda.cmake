# FastnnCuda.cmake: the CUDA/cuDNN backend, included by the top-level CMakeLists.txt when
# -DFASTNN_CUDA=ON.
#
# Provides the target fastnn::cuda (INTERFACE): fastnn::fastnn + FASTNN_WITH_CUDA=1 + the small
# static library of fastnn's kernels (include/fastnn/backend/cuda/kernels.cu, compiled by nvcc) +
# CUDA::cudart, CUDA::cublas and cuDNN 9.
#
# cuDNN is looked for, in order, in: -DCUDNN_ROOT=... (or the environment variable CUDNN_ROOT or
# CUDNN_PATH), the CUDA toolkit's directories, the system, and the layout of NVIDIA's pip wheel
# (nvidia-cudnn-cu13 / -cu12: <site-packages>/nvidia/cudnn/{include,lib}) found through python3.
# Override the result with -DCUDNN_INCLUDE_DIR=... -DCUDNN_LIBRARY=...
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

# ---- cuDNN -----------------------------------------------------------------------------------
set(_fastnn_cudnn_hints "")
foreach(_v CUDNN_ROOT CUDNN_PATH)
  if(DEFINED ${_v} AND NOT "${${_v}}" STREQUAL "")
    list(APPEND _fastnn_cudnn_hints "${${_v}}")
  endif()
  if(DEFINED ENV{${_v}})
    list(APPEND _fastnn_cudnn_hints "$ENV{${_v}}")
  endif()
endforeach()
list(APPEND _fastnn_cudnn_hints "${CUDAToolkit_LIBRARY_ROOT}" "${CUDAToolkit_TARGET_DIR}")
get_filename_component(_fastnn_cuda_root "${CUDAToolkit_BIN_DIR}" DIRECTORY)
list(APPEND _fastnn_cudnn_hints "${_fastnn_cuda_root}")

# NVIDIA's pip wheel: python3 -c "import nvidia.cudnn" -> <site-packages>/nvidia/cudnn
set(_fastnn_pip_cudnn "")
find_program(FASTNN_PYTHON3 NAMES python3 python)
if(FASTNN_PYTHON3)
  execute_process(
    COMMAND "${FASTNN_PYTHON3}" -c "import nvidia.cudnn as m; print(list(m.__path__)[0])"
    OUTPUT_VARIABLE _fastnn_pip_cudnn OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE _fastnn_rc)
  if(NOT _fastnn_rc EQUAL 0)
    set(_fastnn_pip_cudnn "")
  endif()
endif()

find_path(CUDNN_INCLUDE_DIR cudnn.h
  HINTS ${_fastnn_cudnn_hints}
  PATH_SUFFIXES include targets/x86_64-linux/include targets/sbsa-linux/include include/x86_64-linux-gnu)
if(NOT CUDNN_INCLUDE_DIR AND _fastnn_pip_cudnn)
  find_path(CUDNN_INCLUDE_DIR cudnn.h HINTS "${_fastnn_pip_cudnn}" PATH_SUFFIXES include NO_DEFAULT_PATH)
endif()
find_library(CUDNN_LIBRARY NAMES cudnn libcudnn.so.9
  HINTS ${_fastnn_cudnn_hints}
  PATH_SUFFIXES lib64 lib lib/x86_64-linux-gnu targets/x86_64-linux/lib targets/sbsa-linux/lib)
if(NOT CUDNN_LIBRARY AND _fastnn_pip_cudnn)
  find_library(CUDNN_LIBRARY NAMES cudnn libcudnn.so.9 HINTS "${_fastnn_pip_cudnn}" PATH_SUFFIXES lib lib64 NO_DEFAULT_PATH)
endif()
if(NOT CUDNN_INCLUDE_DIR OR NOT CUDNN_LIBRARY)
  message(FATAL_ERROR
    "FASTNN_CUDA: cuDNN 9 was not found (cudnn.h: ${CUDNN_INCLUDE_DIR}, library: ${CUDNN_LIBRARY}). "
    "Pass -DCUDNN_ROOT=<dir with include/cudnn.h and lib/libcudnn.so>, or install the nvidia-cudnn-cu13 wheel "
    "for ${FASTNN_PYTHON3}.")
endif()

set(_fastnn_cudnn_version_h "${CUDNN_INCLUDE_DIR}/cudnn_version.h")
if(NOT EXISTS "${_fastnn_cudnn_version_h}")
  set(_fastnn_cudnn_version_h "${CUDNN_INCLUDE_DIR}/cudnn.h")
endif()
file(STRINGS "${_fastnn_cudnn_version_h}" _fastnn_cudnn_lines REGEX "#define CUDNN_(MAJOR|MINOR|PATCHLEVEL) +[0-9]+")
foreach(_part MAJOR MINOR PATCHLEVEL)
  string(REGEX MATCH "CUDNN_${_part} +([0-9]+)" _m "${_fastnn_cudnn_lines}")
  set(_fastnn_cudnn_${_part} "${CMAKE_MATCH_1}")
endforeach()
set(FASTNN_CUDNN_VERSION "${_fastnn_cudnn_MAJOR}.${_fastnn_cudnn_MINOR}.${_fastnn_cudnn_PATCHLEVEL}")
if(_fastnn_cudnn_MAJOR LESS 9)
  message(FATAL_ERROR "FASTNN_CUDA: cuDNN ${FASTNN_CUDNN_VERSION} at ${CUDNN_INCLUDE_DIR} is too old; fastnn needs cuDNN 9")
endif()
get_filename_component(FASTNN_CUDNN_LIBRARY_DIR "${CUDNN_LIBRARY}" DIRECTORY)
message(STATUS "fastnn: CUDA ${CUDAToolkit_VERSION}, cuDNN ${FASTNN_CUDNN_VERSION} (${CUDNN_LIBRARY}, headers ${CUDNN_INCLUDE_DIR}), "
               "architectures ${CMAKE_CUDA_ARCHITECTURES}")

if(NOT TARGET fastnn_cudnn)
  add_library(fastnn_cudnn SHARED IMPORTED GLOBAL)
  set_target_properties(fastnn_cudnn PROPERTIES
    IMPORTED_LOCATION "${CUDNN_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${CUDNN_INCLUDE_DIR}")
endif()

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
target_link_options(fastnn_cuda INTERFACE "LINKER:-rpath,${FASTNN_CUDNN_LIBRARY_DIR}" "LINKER:--disable-new-dtags")
