"""PathUp: multi-class, high-resolution pathology image synthesis.

Implements the PathUp paper (patho-align training with the feature entropy loss, and
patch-wise timestep tracking for seamless large images) on top of diffusers.
"""

__version__ = "0.1.0"

from pathup.errors import PathUpError

__all__ = ["PathUpError", "__version__"]
