"""RePaint (Lugmayr et al., CVPR 2022) with the official code's settings, on the mask tasks.

    python -m scripts.reproduce --config=configs/repaint.py:box --workdir=runs/repaint_box

Sampler (andreas128/RePaint confs/*.yml, every one of them: face_example.yml, test_c256_*,
test_p256_*, test_inet256_*): timestep_respacing '250' of the 1000-step linear schedule,
schedule_jump_params t_T 250, n_sample 1, jump_length 10, jump_n_sample 10 (the paper's
"r = 10, j = 10", 4570 pairs, 2410 network evaluations), clip_denoised true, learned sigma,
inpa_inj_sched_prev true without cumnoise. `sampler.options.official=True` returns the last
model output as the code does; the default pastes y into the known pixels at the end (the
paper's Algorithm 1). The ImageNet confs add classifier guidance (classifier_scale 1.0), which
is left out (no classifier); CelebA-HQ / Places confs have none.

RePaint is an inpainting method: the tasks with a pixel mask (box, random) only; the others
are refused here. The official runs are noiseless; the shared task presets carry sigma 0.05
(`--config.task.sigma=0` gives the paper's setting), whose noise the known region then carries.
"""

from __future__ import annotations

from jaxdiff import config_lib

MASK_TASKS = ("box", "random")


def get_config(arg: str | None = None):
    a = config_lib.parse_arg(arg, __file__, task=config_lib.task_choice())
    c = config_lib.base_config(a.task)
    if c.task.name not in MASK_TASKS:
        raise ValueError(
            f"configs/repaint.py: task {c.task.name!r} is not an inpainting task; RePaint "
            f"blends the known pixels of a mask ({', '.join(MASK_TASKS)})"
        )
    c.method = "repaint"
    c.sampler.respacing = "250"  # confs/*.yml timestep_respacing: '250'
    o = c.sampler.options
    # schedule_jump_params.t_T 250: the sampler's default t_T is the respaced step count
    o.n_sample = 1  # schedule_jump_params.n_sample
    o.jump_length = 10  # schedule_jump_params.jump_length
    o.jump_n_sample = 10  # schedule_jump_params.jump_n_sample
    o.clip_denoised = True  # confs/*.yml clip_denoised: true
    o.official = False  # True: no final paste of y (test.py saves result['sample'])
    return c
