#pragma once
/// \file mode.hpp
/// Whether a forward pass trains or infers.

namespace fastnn {

/// Training keeps what backward needs (and draws dropout masks); inference does not.
enum class Mode { Train, Infer };

}  // namespace fastnn
