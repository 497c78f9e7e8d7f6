"""Training losses: the denoising loss L_r (Eq. 2), the feature entropy loss L_e (Eq. 3) with its
memory bank, and the first-stage autoencoder loss of the from-scratch models with its optional adversarial
term (a patch discriminator, ``pathup.losses.adversarial``)."""

from pathup.losses.adversarial import PatchDiscriminator, adaptive_weight, generator_loss, hinge_d_loss
from pathup.losses.autoencoder import autoencoder_loss, grid_l1, lab_l1, rgb_to_lab, spectral_l1
from pathup.losses.denoising import denoising_loss, denoising_target, min_snr_weights, snr
from pathup.losses.fel import (FeatureBank, MidBlockFeatures, ProjectionHead, feature_entropy_loss, feature_vector,
                               pool_features)

__all__ = ["PatchDiscriminator", "adaptive_weight", "generator_loss", "hinge_d_loss", "FeatureBank", "MidBlockFeatures", "ProjectionHead", "autoencoder_loss", "grid_l1", "lab_l1", "rgb_to_lab", "spectral_l1", "denoising_loss",
           "denoising_target", "feature_entropy_loss", "feature_vector", "min_snr_weights", "pool_features", "snr"]
