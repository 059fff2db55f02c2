// Declarations of the gloo types that torch's ProcessGroupGloo.hpp names.
//
// The torch wheel ships ProcessGroupGloo.hpp but not the gloo headers it
// includes. loratune only calls ProcessGroupGloo's constructor, its static
// device factory and its Backend interface (all compiled into
// libtorch_cpu), and never creates, deletes, subclasses or calls a gloo
// object itself, so the header needs no more than these names to compile.
// Nothing here is defined or emitted: every gloo object lives inside
// libtorch with torch's own gloo layout. Only trainer/dist/group.cpp sees
// this directory.
#pragma once

#include <chrono>

namespace gloo {

class Context {
 public:
  // Named by ProcessGroupGloo::setTimeout (an inline virtual emitted inside
  // libtorch, never by loratune).
  void setTimeout(std::chrono::milliseconds timeout);
};

}  // namespace gloo
