"""The task presets every method config (configs/*.py) runs on: the forward operator, its
settings and the noise.

Every number is the official DPS setting at 256x256 (DPS configs/*.yaml and paper Sec. 4):
lengths are given at `reference_size` = 256 and scaled by the driver when the model's image size
differs (jaxdiff.experiment.scale_task: box sizes, margins, blur kernel sizes and the Gaussian std
scale by size/256; kernel sizes round to the nearest odd integer >= 3; fractions, the SR factor
and the motion intensity are unitless and stay). The effective values are written to each run's
summary.
"""

from __future__ import annotations

import logging

import ml_collections

log = logging.getLogger("jaxdiff.tasks")

# DPS measurement noise: sigma 0.05 on the [-1, 1] scale (DPS measurements.py; DPS issue #6).
SIGMA = 0.05
REFERENCE_SIZE = 256
# A Gaussian blur narrower than this (std in pixels) leaves the image nearly as it was: at 0.5 px
# the kernel keeps 62% of a pixel's value in place (at 0.375 px, the DPS std 3.0 scaled from
# 256 to 32 px, 89%), so under sigma 0.05 noise the measurement itself is a good estimate.
MIN_BLUR_STD = 0.5


def _task(name: str, operator: str, operator_config: dict, doc: str, sigma: float = SIGMA):
    c = ml_collections.ConfigDict()
    c.name = name
    c.operator = operator  # jaxdiff.operators registry name
    c.operator_config = ml_collections.ConfigDict(operator_config)
    c.noise = "gaussian"
    c.sigma = sigma
    c.reference_size = REFERENCE_SIZE
    c.doc = doc
    return c


def box():
    # DPS configs/inpainting_config.yaml, box variant (commented there): mask_len_range (128, 129),
    # i.e. a 128x128 hole at a random position 16 px from the border (util/img_utils.py
    # random_sq_bbox). Paper: "128x128 box region" (9.1).
    return _task(
        "box",
        "inpaint_box",
        {"mask_len_range": (128, 129), "margin": (16, 16)},
        "inpainting, 128x128 box at a random position (16 px margin), sigma 0.05",
    )


def random():
    # DPS configs/inpainting_config.yaml: mask_type random, mask_prob_range (0.3, 0.7): one
    # fraction per image, shared across RGB (DPS util/img_utils.py mask_generator). (The paper's
    # text says 92%; the official config draws 30-70%, which is what this preset follows.)
    return _task(
        "random",
        "inpaint_random",
        {"mask_prob_range": (0.3, 0.7)},
        "inpainting, 30-70% of the pixels removed (one fraction per image), sigma 0.05",
    )


def gaussian_blur():
    # DPS configs/gaussian_deblur_config.yaml: kernel_size 61, intensity (std) 3.0.
    return _task(
        "gaussian_blur",
        "gaussian_blur",
        {"kernel_size": 61, "std": 3.0},
        "Gaussian deblurring, 61x61 kernel, std 3.0, sigma 0.05",
    )


def motion_blur():
    # DPS configs/motion_deblur_config.yaml: kernel_size 61, intensity 0.5. The
    # official code draws ONE kernel per run; here each image draws its own from its key.
    return _task(
        "motion_blur",
        "motion_blur",
        {"kernel_size": 61, "intensity": 0.5},
        "motion deblurring, 61x61 random kernel, intensity 0.5, sigma 0.05",
    )


def sr4():
    # DPS configs/super_resolution_config.yaml: scale_factor 4, the MATLAB-style bicubic Resizer
    # (DPS util/resizer.py).
    return _task(
        "sr4",
        "super_resolution",
        {"factor": 4},
        "super-resolution x4 (antialiased bicubic downsampling), sigma 0.05",
    )


def sr2():
    # Not a DPS table task: the sr4 operator at factor 2, for small images (at 32 px, x4 leaves an
    # 8x8 measurement that says little more than the mean colour).
    return _task(
        "sr2",
        "super_resolution",
        {"factor": 2},
        "super-resolution x2 (antialiased bicubic downsampling), sigma 0.05",
    )


def denoise():
    # Not a DPS table task: A = I, Gaussian noise only (DPS registers it as 'noise').
    return _task("denoise", "denoise", {}, "denoising, sigma 0.05")


def colorize():
    # Not a DPS task: grayscale projection (mean of R, G, B), as in DDRM/DDNM colorization.
    return _task(
        "colorize", "colorize", {"weights": "mean"}, "colorization (mean grey), sigma 0.05"
    )


def phase_retrieval():
    # DPS configs/phase_retrieval_config.yaml: oversample 2.0. Nonlinear: only DPS
    # and Score-ALD use it properly; the paper reports the best of 4 samples (not done here).
    return _task(
        "phase_retrieval",
        "phase_retrieval",
        {"oversample": 2.0},
        "Fourier phase retrieval, oversampling 2, sigma 0.05",
    )


TASKS = {
    "box": box,
    "random": random,
    "gaussian_blur": gaussian_blur,
    "motion_blur": motion_blur,
    "sr4": sr4,
    "sr2": sr2,
    "denoise": denoise,
    "colorize": colorize,
    "phase_retrieval": phase_retrieval,
}
# The five tasks of the DPS tables (DPS paper Tables 1-2), in the paper's column order.
PAPER_TASKS = ("sr4", "box", "random", "gaussian_blur", "motion_blur")


def triviality(task: dict) -> str | None:
    """Why a task at its effective size (jaxdiff.experiment.scale_task's output) no longer poses
    the problem its preset names, or None: a Gaussian blur scaled below MIN_BLUR_STD pixels."""
    cfg = task.get("operator_config", {})
    std = cfg.get("std")
    if task.get("operator") != "gaussian_blur" or std is None or float(std) >= MIN_BLUR_STD:
        return None
    scale = task.get("length_scale", 1.0)
    how = (
        f"the preset's std {float(std) / scale:g} px at {task.get('reference_size')} px scaled "
        f"to {task.get('image_size')} px"
        if scale != 1
        else "as configured"
    )
    return (
        f"task {task.get('name')!r}: a Gaussian blur of std {float(std):.3g} px ({how}) barely "
        f"blurs (below {MIN_BLUR_STD} px): the measurement is nearly the image; give the blur at "
        "the model's size, e.g. --config.task.reference_size="
        f"{task.get('image_size')} --config.task.operator_config.std=1.0 (the demo's 32 px blur)"
    )


def warn_if_trivial(task: dict) -> str | None:
    """Log `triviality(task)` as a warning (once per call); returns it."""
    reason = triviality(task)
    if reason:
        log.warning(reason)
    return reason


def get_task(name: str) -> ml_collections.ConfigDict:
    """The preset `name`; an unknown name raises a KeyError listing the known ones."""
    try:
        return TASKS[name]()
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None


# The latent methods' tasks (PSLD, LituRout/PSLD diffusion-posterior-sampling/configs/
# *_psld.yaml, Stable Diffusion at 512 px): the DPS operators with lengths given at 512 px.
LATENT_REFERENCE_SIZE = 512
LATENT_TASKS = {
    # super_resolution_config_psld.yaml: scale_factor 4, in_shape (1, 3, 512, 512)
    "sr4": {"factor": 4},
    # box_inpainting_config_psld.yaml: mask_len_range (256, 257), image_size 512 (the DPS
    # mask_generator's margin stays (16, 16) px)
    "box": {"mask_len_range": (256, 257), "margin": (16, 16)},
    # inpainting_config_psld.yaml: mask_type random, mask_prob_range (0.3, 0.7)
    "random": {"mask_prob_range": (0.3, 0.7)},
    # gaussian_deblur_config_psld.yaml: kernel_size 121, intensity 3.0
    "gaussian_blur": {"kernel_size": 121, "std": 3.0},
    # motion_deblur_config_psld.yaml: kernel_size 121, intensity 0.5
    "motion_blur": {"kernel_size": 121, "intensity": 0.5},
}


def latent_task(name: str, factor: int = 4) -> ml_collections.ConfigDict:
    """The preset `name` with PSLD's Stable Diffusion settings (LATENT_TASKS, lengths at 512 px;
    sigma 0.05 in every *_psld.yaml); other presets as they are. `factor` sets the SR factor
    (8: the x8 column of the latent papers' tables; no PSLD config sets it)."""
    c = get_task(name)
    if name in LATENT_TASKS:
        c.reference_size = LATENT_REFERENCE_SIZE
        c.operator_config = ml_collections.ConfigDict(LATENT_TASKS[name])
    if c.operator == "super_resolution":
        c.operator_config.factor = int(factor)
        c.doc = c.doc.replace("x4", f"x{int(factor)}").replace("x2", f"x{int(factor)}")
    return c
