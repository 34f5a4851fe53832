# fastnnFindCudnn.cmake: finds cuDNN 9 and defines the imported target `fastnn_cudnn`.
# Used by FastnnCuda.cmake when fastnn is built with -DFASTNN_CUDA=ON, and installed beside
# fastnnConfig.cmake so that find_package(fastnn COMPONENTS cuda) finds cuDNN the same way on
# the user's machine. Needs find_package(CUDAToolkit) first.
#
# Searched, in order: -DCUDNN_ROOT=... (or the environment variable CUDNN_ROOT or CUDNN_PATH),
# the CUDA toolkit's directories, the system, and NVIDIA's pip wheel (nvidia-cudnn-cu13 / -cu12:
# <site-packages>/nvidia/cudnn/{include,lib}) found through python3. Override the result with
# -DCUDNN_INCLUDE_DIR=... -DCUDNN_LIBRARY=...
#
# Sets FASTNN_CUDNN_FOUND, FASTNN_CUDNN_VERSION, FASTNN_CUDNN_LIBRARY_DIR, and
# FASTNN_CUDNN_REASON when not found. FASTNN_CUDNN_IMPORT_GLOBAL=ON makes the target global.

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
set(FASTNN_CUDNN_FOUND FALSE)
set(FASTNN_CUDNN_VERSION "")
if(NOT CUDNN_INCLUDE_DIR OR NOT CUDNN_LIBRARY)
  set(FASTNN_CUDNN_REASON
    "cuDNN 9 was not found (cudnn.h: ${CUDNN_INCLUDE_DIR}, library: ${CUDNN_LIBRARY}). "
    "Pass -DCUDNN_ROOT=<dir with include/cudnn.h and lib/libcudnn.so>, or install the nvidia-cudnn-cu13 wheel "
    "for ${FASTNN_PYTHON3}.")
  return()
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
if(NOT _fastnn_cudnn_MAJOR OR _fastnn_cudnn_MAJOR LESS 9)
  set(FASTNN_CUDNN_REASON "cuDNN ${FASTNN_CUDNN_VERSION} at ${CUDNN_INCLUDE_DIR} is too old; fastnn needs cuDNN 9")
  return()
endif()
get_filename_component(FASTNN_CUDNN_LIBRARY_DIR "${CUDNN_LIBRARY}" DIRECTORY)
if(NOT TARGET fastnn_cudnn)
  if(FASTNN_CUDNN_IMPORT_GLOBAL)
    add_library(fastnn_cudnn SHARED IMPORTED GLOBAL)
  else()
    add_library(fastnn_cudnn SHARED IMPORTED)
  endif()
  set_target_properties(fastnn_cudnn PROPERTIES
    IMPORTED_LOCATION "${CUDNN_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${CUDNN_INCLUDE_DIR}")
endif()
set(FASTNN_CUDNN_FOUND TRUE)
