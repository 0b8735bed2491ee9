"""Orientations from images: recovery from distances (L_OR, eq. 4), ab initio from the images
alone, frame resolution, and alignment to the truth (E_OR, eqs. 5–6).

Takes images (N, n, n) or distances in radians; gives unit quaternions (N, 4), scalar first (RELION's A).
"""
