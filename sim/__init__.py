"""hwlab.sim: cycle-approximate hardware simulation (bit-serial PE array, edge SIMD core).

Not built yet; tracked in the issue tracker.
"""
