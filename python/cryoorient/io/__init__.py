"""File I/O for cryoorient: MRC maps/stacks, RELION STAR and cryoSPARC .cs particles, atomic models.

Units and conventions used throughout:

* lengths in Å (voxel/pixel sizes, origins, defocus), angles in degrees
  (RELION rot/tilt/psi kept as plain columns; conversion lives in
  :mod:`cryoorient.geometry`);
* arrays follow mrcfile's ``[z, y, x]`` order; image stacks are ``[n, y, x]``;
* the box centre is voxel ``n // 2`` on each axis;
* writers are atomic (temp file + rename) and refuse to overwrite unless
  ``overwrite=True``; invalid files raise :class:`FormatError` (a ValueError);
* output directories follow :mod:`cryoorient.io.outdir` (marker file, places never written).
"""

from ._atomic import FormatError
from .cryosparc import read_cs, write_cs
from .formats import PARTICLE_SUFFIXES, read_particles, write_particles, write_recovered_star
from .mrc import StackWriter, pad_to_cube, read_map, read_stack, write_map, write_stack
from .outdir import OUTPUT_MARKER, check_output_dir, make_output_dir, output_dir, remove_stale, require_resources
from .particles import Particles, check_pixel_size, read_particle_images
from .star import OPTICS_COLUMNS, read_star, write_star
from .structure import (
    centre_of_mass,
    density_from_atoms,
    density_from_model,
    model_atoms,
    radius_of_gyration,
    repeated_chain_symmetry,
)

__all__ = [
    "FormatError",
    "read_map",
    "write_map",
    "pad_to_cube",
    "read_stack",
    "write_stack",
    "StackWriter",
    "Particles",
    "check_pixel_size",
    "read_particles",
    "write_particles",
    "PARTICLE_SUFFIXES",
    "read_star",
    "write_star",
    "read_cs",
    "write_cs",
    "write_recovered_star",
    "read_particle_images",
    "OPTICS_COLUMNS",
    "density_from_atoms",
    "density_from_model",
    "centre_of_mass",
    "model_atoms",
    "radius_of_gyration",
    "repeated_chain_symmetry",
    "OUTPUT_MARKER",
    "check_output_dir",
    "output_dir",
    "make_output_dir",
    "remove_stale",
    "require_resources",
]
