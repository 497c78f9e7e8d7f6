"""Build, load and save the latent diffusion model (Stable Diffusion layout, diffusers format)."""

from pathup.model.ldm import LDM, build_ldm, load_ldm, save_ldm
from pathup.model.registry import MODEL_SIZES, ModelSize

__all__ = ["LDM", "MODEL_SIZES", "ModelSize", "build_ldm", "load_ldm", "save_ldm"]
