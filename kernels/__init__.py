"""lmroute_kernels: the scoring core. `reference` is the NumPy reference implementation (the spec the
compiled core must match); the compiled extension lands here later."""
