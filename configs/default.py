"""The base config every method config starts from (big_vision / score_sde style).

    python -m scripts.reproduce --config=configs/dps.py:box --workdir=runs/dps_box \
        --config.model=CONVERTED_DIR --config.data=IMAGE_FOLDER --config.num_images=100

`model = "demo"` is the bundled demo prior (jaxdiff/assets/demo_prior) and `data = "demo"` its
held-out photos, so every command works out of the box; point them at a converted checkpoint and
an image folder (PNG/JPEG, centre-cropped and resized to the model's size) for real runs.
"""

from __future__ import annotations

import ml_collections

from configs import tasks


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.method = "ddpm"  # a jaxdiff.samplers name, a jaxdiff.baselines name, or "measurement"
    c.task = tasks.get_task(arg or "box")

    c.model = "demo"  # converted checkpoint folder (python -m convert_weights), or "demo"
    c.data = "demo"  # image folder, or "demo" (the demo prior's held-out photos)
    c.num_images = 0  # the first N images of the folder (sorted by name); 0 = all
    # a named list of configs/image_lists.py, e.g. "ffhq_dps_1k" (the DPS paper's FFHQ split)
    c.image_list = ""
    c.seed = 0  # per-image key = fold_in(PRNGKey(seed), index of the file in the sorted folder)
    c.batch_size = 0  # images per compiled call, padded to the device count; 0 = min(N, 8)

    c.sampler = ml_collections.ConfigDict()
    # DPS configs/diffusion_config.yaml timestep_respacing 1000: every step of a
    # 1000-step model. A respacing spec of jaxdiff.diffusion.space_timesteps ("100", "ddim50").
    c.sampler.respacing = "1000"
    c.sampler.options = ml_collections.ConfigDict()  # static factory options (clip_denoised, ...)
    c.sampler.hparams = ml_collections.ConfigDict()  # traced hyperparameters (sweepable)

    c.baseline = ml_collections.ConfigDict()  # keyword arguments of a classical baseline

    c.metrics = ml_collections.ConfigDict()
    c.metrics.lpips_net = "vgg"  # DPS reports LPIPS-VGG (util/compute_metric.py)
    # "clip": the reconstruction clipped to [-1, 1] (what the PNG holds). "minmax": per-image
    # min-max normalisation of both images, as the DPS repo's saved images (DPS sample_condition.py).
    c.metrics.range = "clip"
    # FID / KID (set-level, reconstructions vs ground truth, pytorch-fid / torch-fidelity): the
    # folder of pytorch-fid's pt_inception-2015-12-05-6726825d.pth converted by
    # `python -m convert_weights FILE --out DIR`; "" = not computed (reported as missing).
    c.metrics.inception = ""
    c.metrics.fid_sqrtm = "scipy"  # pytorch-fid's scipy.linalg.sqrtm; "svd": same value, fast
    c.metrics.kid_subsets = 100  # torch-fidelity defaults (subset size capped at the image count)
    c.metrics.kid_subset_size = 1000
    # where the ground truth's features are cached; "" = DIR/reference_stats of the Inception
    c.metrics.reference_stats = ""

    c.output = ml_collections.ConfigDict()
    c.output.save_images = True  # truth / measurement / reconstruction PNGs per image
    c.output.figure_images = 8  # rows of the figure grid
    return c
