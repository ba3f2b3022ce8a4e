"""SDEdit (Meng et al. ICLR 2022) applied to the measurement, one preset per task.

Official VP code settings (ermongroup/SDEdit runners/image_editing.py): t0 = 0.4
(`--t 400`, the code default; its README examples use 0.5), the reverse chain without clipping,
the eps-form mean with fixed-small variance; `--sample_step` K = 3 repeats. Here the checkpoint's
own variance type is used and K = 1 (each repeat costs a full chain; `sampler.options.repeats=3`
restores it). The guide is the measurement brought to image shape (bicubic for SR); on
inpainting the masked variant keeps the measured pixels (use_mask).
"""

from __future__ import annotations

from jaxdiff import config_lib

T0 = 0.4  # SDEdit --t 400 of 1000 (main.py default)


def get_config(arg: str | None = None):
    a = config_lib.parse_arg(arg, __file__, task=config_lib.task_choice())
    c = config_lib.base_config(a.task)
    c.method = "sdedit"
    c.sampler.respacing = "1000"
    c.sampler.options.clip_denoised = False
    c.sampler.options.repeats = 1
    # The scan covers steps up to max_t0 (static); t0 (traced) picks where the chain starts.
    c.sampler.options.max_t0 = T0
    c.sampler.options.use_mask = c.task.operator in ("inpaint_box", "inpaint_random", "inpaint")
    c.sampler.hparams.t0 = T0
    return c
