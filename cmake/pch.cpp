// Compiles cmake/pch.h once; other targets reuse the result.
