"""3D maps from oriented particles: direct Fourier reconstruction with CTF, FSC, map
rotation/low-pass/alignment, and projection-matching refinement.

Takes images with orientations (quaternions, RELION's A) and shifts (Å); gives cubic [z, y, x] maps, Å per voxel.
"""
