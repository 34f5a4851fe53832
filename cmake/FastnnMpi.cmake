# FastnnMpi.cmake: data-parallel training over MPI, included by the top-level CMakeLists.txt when
# -DFASTNN_MPI=ON (the default) and MPI is found.
#
# Provides fastnn::mpi (INTERFACE): fastnn::fastnn + MPI's C library (MPI::MPI_CXX) +
# FASTNN_WITH_MPI=1, for include/fastnn/distributed/mpi.hpp. With FASTNN_CUDA and NCCL found (the
# CUDA toolkit's lib64, or NCCL_ROOT), also fastnn::nccl: fastnn::cuda + fastnn::mpi + NCCL, for
# include/fastnn/distributed/cuda/nccl.hpp. Both are installed with the export sets
# fastnnMpiTargets and fastnnNcclTargets (find_package(fastnn COMPONENTS mpi nccl)).

add_library(fastnn_mpi INTERFACE)
add_library(fastnn::mpi ALIAS fastnn_mpi)
target_link_libraries(fastnn_mpi INTERFACE fastnn::fastnn MPI::MPI_CXX)
target_compile_definitions(fastnn_mpi INTERFACE FASTNN_WITH_MPI=1)
set_target_properties(fastnn_mpi PROPERTIES EXPORT_NAME mpi)
install(TARGETS fastnn_mpi EXPORT fastnnMpiTargets)
install(EXPORT fastnnMpiTargets NAMESPACE fastnn:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/fastnn)
message(STATUS "fastnn: MPI ${MPI_CXX_VERSION} (${MPIEXEC_EXECUTABLE}): fastnn::mpi")

set(FASTNN_NCCL_FOUND OFF)
if(TARGET fastnn_cuda AND FASTNN_NCCL)
  find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${NCCL_ROOT} $ENV{NCCL_ROOT} ${CUDAToolkit_INCLUDE_DIRS} PATH_SUFFIXES include)
  find_library(NCCL_LIBRARY nccl HINTS ${NCCL_ROOT} $ENV{NCCL_ROOT} ${CUDAToolkit_LIBRARY_DIR} PATH_SUFFIXES lib lib64)
  if(NCCL_INCLUDE_DIR AND NCCL_LIBRARY)
    set(FASTNN_NCCL_FOUND ON)
    add_library(fastnn_nccl INTERFACE)
    add_library(fastnn::nccl ALIAS fastnn_nccl)
    target_include_directories(fastnn_nccl INTERFACE ${NCCL_INCLUDE_DIR})
    target_link_libraries(fastnn_nccl INTERFACE fastnn_cuda fastnn_mpi ${NCCL_LIBRARY})
    target_compile_definitions(fastnn_nccl INTERFACE FASTNN_WITH_NCCL=1)
    set_target_properties(fastnn_nccl PROPERTIES EXPORT_NAME nccl)
    install(TARGETS fastnn_nccl EXPORT fastnnNcclTargets)
    install(EXPORT fastnnNcclTargets NAMESPACE fastnn:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/fastnn)
    message(STATUS "fastnn: NCCL ${NCCL_LIBRARY}: fastnn::nccl")
  else()
    message(STATUS "fastnn: NCCL not found (set NCCL_ROOT): fastnn::nccl is not built")
  endif()
endif()
