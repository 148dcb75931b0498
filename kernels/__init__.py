"""lmroute.kernels: the scoring core. `compiled` is the C++ core every runtime path uses (built by the
package build from kernels/src with CMake + nanobind); `reference` is the NumPy reference, the spec the
compiled core must match (used by tests and the offline pipeline)."""
