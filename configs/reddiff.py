"""RED-diff (Mardani, Song, Kautz, Vahdat, ICLR 2024) with the official code's settings, one preset
per task (docs/methods.md).

    python -m scripts.reproduce --config=configs/reddiff.py:sr4 --workdir=runs/reddiff_sr4

Sampler (NVlabs/RED-diff, commit 66482f23: algos/reddiff.py, _configs/algo/reddiff.yaml,
sample_batch.sh, sample_test.sh): 1000 steps on range(0, 1000, 1) (grid "reddiff1000": sample_batch.sh
num_steps=1000 for every algorithm, start_step 1000, end_step 0), Adam (betas 0.9 / 0.99) on mu
started at A^+ y, denoise_term_weight "linear" (reddiff.yaml), the per-image mean
(`batch_coupled=True` is the code's whole-batch mean: only Adam's eps sees the difference).
lr / grad_term_weight / sigma_x0 per task from the reddiff lines of sample_test.sh, the repo's
per-task settings (its sample_batch.sh instead sets GRAD_WEIGHT=1.0 for every algorithm at once):
- box / random: the uncommented "noisy inpaint + reddiff + adam" line (in2_20ff, sigma_y 0.1):
  lr 0.25, grad_term_weight 1.0, sigma_x0 0.0 (the noise-free inpainting line has
  grad_term_weight 0.25 and sigma_x0 1e-4: the parity fixtures' setting);
- gaussian_blur: "deblur + reddiff + adam" (deblur_gauss): lr 0.5, grad_term_weight 0.25;
- sr4 / sr2: "sr + reddiff + adam" (sr4): the yaml's lr 0.1, grad_term_weight 0.25;
- motion_blur, denoise, colorize: no official line; the deblurring / yaml values (noted below).
obs_weight is 1.0 everywhere (reddiff.yaml). Phase retrieval is refused: the start A^+ y needs a
linear operator (the sampler takes init=<function> for a nonlinear one).
"""

from __future__ import annotations

from jaxdiff import config_lib

# utils/functions.py get_timesteps; sample_batch.sh num_steps=1000 (start_step 1000, end_step 0)
RESPACING = "reddiff1000"
# task -> (lr, grad_term_weight, sigma_x0), with the sample_test.sh line each comes from
SETTINGS = {
    "box": (0.25, 1.0, 0.0),  # noisy inpaint + reddiff + adam (in2_20ff)
    "random": (0.25, 1.0, 0.0),  # noisy inpaint + reddiff + adam (in2_20ff)
    "gaussian_blur": (0.5, 0.25, 0.0),  # deblur + reddiff + adam (deblur_gauss)
    "motion_blur": (0.5, 0.25, 0.0),  # no official line: the Gaussian deblurring values
    "sr4": (0.1, 0.25, 0.0),  # sr + reddiff + adam (sr4): reddiff.yaml lr / grad_term_weight
    "sr2": (0.1, 0.25, 0.0),  # no official line: the x4 values
    "denoise": (0.1, 0.25, 0.0),  # no official line: reddiff.yaml defaults
    "colorize": (0.1, 0.25, 0.0),  # no official line: reddiff.yaml defaults
}


def get_config(arg: str | None = None):
    a = config_lib.parse_arg(arg, __file__, task=config_lib.task_choice())
    c = config_lib.base_config(a.task)
    if c.task.name not in SETTINGS:
        raise ValueError(
            f"configs/reddiff.py: task {c.task.name!r} is not supported: RED-diff starts at "
            f"A^+ y, which needs a linear operator ({', '.join(SETTINGS)})"
        )
    lr, grad_term_weight, sigma_x0 = SETTINGS[c.task.name]
    c.method = "reddiff"
    c.sampler.respacing = RESPACING
    c.sampler.options.denoise_term_weight = "linear"  # reddiff.yaml
    c.sampler.options.batch_coupled = False  # True: the code's whole-batch mean (parity)
    c.sampler.options.init = "pinv"  # REDDIFF.initialize: mu = H_pinv(y)
    c.sampler.hparams.lr = lr
    c.sampler.hparams.grad_term_weight = grad_term_weight
    c.sampler.hparams.obs_weight = 1.0  # reddiff.yaml
    c.sampler.hparams.sigma_x0 = sigma_x0
    return c
