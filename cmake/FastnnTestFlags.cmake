# FastnnTestFlags.cmake: the optimisation level of fastnn's test programs (tests/ and its
# subdirectories), included by tests/CMakeLists.txt.
#
#   fastnn_test_sources(<source>...)  compiles these sources at FASTNN_TEST_OPTIMIZATION in Release
#
# fastnn_build_flags gives every program of fastnn -O3 in Release. For the tests -O2 is enough:
# it takes about 70% of -O3's compile time per translation unit (the library's templates and the
# x86 kernels are instantiated in every test TU), with the same floating-point semantics (no
# -ffast-math either way; GCC contracts a*b+c into FMA at -O2 as at -O3) and the same CPU kernels
# (runtime-dispatched, with their own target attributes and intrinsics). Measurements:
# bench/results/ci-build-time-2026-12-04.md. -DFASTNN_TEST_OPTIMIZATION=-O3 restores the old flags.
#
# A source file's COMPILE_OPTIONS come after the target's and its libraries' options on the compile
# line, so this -O2 overrides fastnn_build_flags' -O3 (a target_compile_options(-O2) would not:
# the interface options of linked libraries follow the target's own). Other configurations
# (the sanitizer builds' RelWithDebInfo at -O1) are left alone.
include_guard(GLOBAL)
set(FASTNN_SANITIZE_TEST_OPTIMIZATION "-O0" CACHE STRING
    "Optimisation flag of fastnn's test programs in the sanitizer build (empty: the build's own)")
set(FASTNN_TEST_OPTIMIZATION "-O2" CACHE STRING
    "Optimisation flag of fastnn's test programs in Release builds (fastnn_build_flags gives -O3 to the others)")

function(fastnn_test_sources)
  if(FASTNN_TEST_OPTIMIZATION)
    set_property(SOURCE ${ARGN} DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR} APPEND PROPERTY COMPILE_OPTIONS
      "$<$<CONFIG:Release>:${FASTNN_TEST_OPTIMIZATION}>")
  endif()
  # The AddressSanitizer build compiles the test programs' own translation units at FASTNN_SANITIZE_TEST_OPTIMIZATION:
  # -O0 compiles an instrumented test TU in less than half the time of -O1 (test_locale: 90 s against 201 s of CPU;
  # bench/results/ci-stage-times-2026-12-07.md). The tests run slower, but they are small; the examples, which
  # train for seconds, keep the build's -O1.
  if(FASTNN_SANITIZE AND FASTNN_SANITIZE_TEST_OPTIMIZATION)
    set_property(SOURCE ${ARGN} DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR} APPEND PROPERTY COMPILE_OPTIONS
      "${FASTNN_SANITIZE_TEST_OPTIMIZATION}")
  endif()
endfunction()
