"""hwlab.kernels: GPU kernels (Triton, CuPy) for hwlab datatypes.

Not built yet; tracked in the issue tracker. Importing this package never needs a GPU.
"""
