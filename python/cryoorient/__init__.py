"""cryoorient: recover the orientations of single-particle cryo-EM projections.

Conventions used throughout the package: quaternions are scalar-first (w, x, y, z);
angles are radians unless a name says ``_deg`` (RELION Euler angles are degrees);
lengths are Å; MRC arrays are indexed [z, y, x].
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cryoorient")
except PackageNotFoundError:  # running from a source tree
    __version__ = "dev"
