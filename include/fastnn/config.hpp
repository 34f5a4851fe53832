#pragma once
/// \file config.hpp
/// Version information and build-time switches of fastnn.

#define FASTNN_VERSION_MAJOR 0
#define FASTNN_VERSION_MINOR 1
#define FASTNN_VERSION_PATCH 0
#define FASTNN_VERSION_STRING "0.1.0"

// FASTNN_WITH_CUDA is defined (to 1) by the fastnn::cuda CMake target. CPU-only builds
// never include a CUDA header.
