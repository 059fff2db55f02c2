// See ../context.h: ProcessGroupGloo.hpp holds these by pointer only.
#pragma once

namespace gloo::transport {

class Device;

// Held in std::unique_ptr members of ProcessGroupGloo's send/recv work
// classes, whose destructors are emitted inside libtorch.
class UnboundBuffer {
 public:
  virtual ~UnboundBuffer();
};

}  // namespace gloo::transport
