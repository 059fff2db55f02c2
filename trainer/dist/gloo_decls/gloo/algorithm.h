// See context.h: ProcessGroupGloo.hpp includes this; it needs nothing from it.
#pragma once
#include "gloo/context.h"
