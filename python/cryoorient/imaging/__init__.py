"""The imaging model p = C_φ S_t P_θ x + n (eq. 1): projection, CTF, shifts, noise, simulated datasets.

Takes a density (cubic [z, y, x] map, Å per voxel) and orientations (scalar-first quaternions
giving RELION's A); gives images (N, n, n) float32 in the same pixel size, the box centre at n//2.
"""
