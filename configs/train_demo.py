"""The demo prior: a small ADM UNet trained on scikit-image's bundled colour photos.

`python -m scripts.train --config=configs/train_demo.py[:preset] --workdir=DIR`

Presets: `demo` (the shipped prior, sized so training fits about 80 minutes of a 2-core CPU and
the full demo runs in minutes on a laptop CPU), `tiny` (seconds; tests and smoke runs). Append
`,learn_sigma` (`--config=configs/train_demo.py:demo,learn_sigma`) to learn the variance too:
six output channels, variance type learned_range, improved DDPM's hybrid loss
(jaxdiff.training.make_loss_fn); the exported prior then samples with its learned sigma.

Why 64 channels at full resolution: ADM normalises with GroupNorm(32 groups), so at 32 channels
every group is one channel, i.e. instance norm, which removes each channel's spatial mean. The
1.07M-parameter v0 prior (model_channels=32) could therefore not predict the image-mean part of
eps: its x0 estimate's mean colour error equalled that of x_t / sqrt(abar_t) at every t (0.74 at
t=800), and its samples drifted to saturated flat colours. At 64 channels a group holds two.
"""

import ml_collections

from jaxdiff import config_lib, images

# The photographs of scenes among the rest; hubble_deep_field (stars on black) and retina (an
# orange disc on black) are left out: their black backgrounds dominated the v0 prior's crops.
TRAIN_PHOTOS = (
    "rocket",
    "motorcycle_left",
    "motorcycle_right",
    "grace_hopper",
    "immunohistochemistry",
)

DIFFUSION = {
    "num_timesteps": 1000,
    "beta_schedule": "linear",
    "beta_start": 1e-4,
    "beta_end": 0.02,
    # The shipped prior does not learn sigma (the variance head needs many more steps to pay off
    # than the CPU budget gives); fixed_small = posterior variance, the tighter choice for short
    # respaced schedules. The `learn_sigma` option switches to learned_range.
    "variance_type": "fixed_small",
    "schedule_dtype": "float64",
}


def adm_config(resolution: int, channels: int, channel_mult, num_res_blocks: int, attn_ds) -> dict:
    # Average-pool down / nearest up with no resampling convs (conv_resample and resblock_updown
    # off): the full-resolution 64-channel up-sampling convs were a third of the forward cost.
    return {
        "image_size": resolution,
        "in_channels": 3,
        "model_channels": channels,
        "out_channels": 3,
        "num_res_blocks": num_res_blocks,
        "attention_resolutions": tuple(attn_ds),
        "dropout": 0.0,
        "channel_mult": tuple(channel_mult),
        "conv_resample": False,
        "num_classes": None,
        "num_heads": 1,
        "num_head_channels": 32,
        "num_heads_upsample": -1,
        "use_scale_shift_norm": True,
        "resblock_updown": False,
        "use_new_attention_order": False,
    }


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = config_lib.parse_arg(
        arg, __file__, preset=config_lib.Choice("demo", ("demo", "tiny")), learn_sigma=False
    )
    c = ml_collections.ConfigDict()
    c.preset = arg or "demo"  # as given, for the exported prior's meta
    c.seed = 0
    c.diffusion = dict(DIFFUSION)
    c.data = ml_collections.ConfigDict(
        {
            "resolution": 32,
            # Short side of each photo resized to resolution * scale before cropping: 1 = whole
            # photo (the demo's view), 4 = a quarter of its short side.
            "scales": (1.0, 1.5, 2.0, 3.0, 4.0),
            # held out for evaluation and the demo's inverse problems; never in a training batch
            # (jaxdiff.photos.training_names excludes them by construction)
            "held_out": images.DEMO_HELD_OUT,
            "train_photos": TRAIN_PHOTOS,  # () = every bundled photo that is not held out
            "batch_size": 16,
        }
    )
    c.model = ml_collections.ConfigDict(
        {"arch": "adm", "config": adm_config(32, 64, (1, 2, 2), 1, (4,))}
    )
    c.optim = ml_collections.ConfigDict(
        {
            "lr": 8e-4,
            "warmup_steps": 50,
            "weight_decay": 0.0,
            "clip_norm": 1.0,
            "b1": 0.9,
            "b2": 0.999,
            # Cosine decay to lr / 10 at num_steps (sized to the CPU budget).
            "end_lr_factor": 0.1,
        }
    )
    c.ema_decay = 0.995
    c.train = ml_collections.ConfigDict(
        {
            "num_steps": 2200,
            "log_every": 10,
            "eval_every": 100,
            "eval_batch": 48,
            "ckpt_every": 50,
            "max_to_keep": 2,
        }
    )
    if a.preset == "tiny":
        c.data.resolution = 8
        c.data.scales = (1.0, 2.0)
        c.data.train_photos = ("rocket", "immunohistochemistry")  # quick to load
        c.data.batch_size = 4
        c.model.config = adm_config(8, 32, (1,), 1, ())
        c.optim.lr = 1e-3
        c.optim.warmup_steps = 2
        c.train.num_steps = 6
        c.train.log_every = 1
        c.train.eval_every = 3
        c.train.eval_batch = 4
        c.train.ckpt_every = 2
    if a.learn_sigma:
        c.diffusion.variance_type = "learned_range"
        c.model.config.out_channels = 6  # eps, then the variance interpolation v
    return c
