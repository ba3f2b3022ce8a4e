"""Each method's time grid against the official file's own formula, for step counts that do and
do not divide T = 1000."""

import numpy as np
import pytest

from jaxdiff.diffusion import make_schedule, space_timesteps
from jaxdiff.diffusion.time_grids import TIME_GRIDS, ddnm_walk, schedule_jump

NS = (7, 12, 30, 75, 100, 250, 1000)
T = 1000


@pytest.mark.parametrize("n", NS)
def test_ddnm_grid_is_get_schedule_jump(n):
    # wyhuai/DDNM functions/svd_ddnm.py ddnm_diffusion (travel_length = travel_repeat = 1):
    #   skip = config.diffusion.num_diffusion_timesteps//config.time_travel.T_sampling
    #   times = get_schedule_jump(T_sampling, 1, 1)  ->  T_sampling-1, ..., 0, -1
    #   for i, j in time_pairs: i, j = i*skip, j*skip; if j<0: j=-1
    skip = T // n
    times = list(range(n - 1, -1, -1)) + [-1]
    pairs = []
    for i, j in zip(times[:-1], times[1:]):
        i, j = i * skip, j * skip
        if j < 0:
            j = -1
        pairs.append((i, j))
    assert ddnm_walk(n, T) == pairs
    assert space_timesteps(T, f"ddnm{n}") == sorted(i for i, _ in pairs)
    assert len(space_timesteps(T, f"ddnm{n}")) == n


def test_ddnm_12_steps_start_at_913():
    sched = make_schedule(T, respacing="ddnm12")
    assert sched.num_steps == 12 and sched.timestep_map[-1] == 913
    assert make_schedule(T, respacing="ddrm12").num_steps == 13  # DDRM's skip: 996 first


def test_schedule_jump_time_travel():
    # RePaint's jumps: after every travel_length steps below N - travel_length, go back up
    # travel_length steps, travel_repeat - 1 times; hand-unrolled for N = 10, length 2, repeat 2
    assert schedule_jump(10, 2, 2) == [
        9, 8, 7, 6, 7, 8, 7, 6, 5, 4, 5, 6, 5, 4, 3, 2, 3, 4, 3, 2, 1, 0, 1, 2, 1, 0, -1,
    ]  # fmt: skip
    for n, length, repeat in ((12, 1, 1), (30, 3, 2), (75, 5, 3), (100, 10, 2)):
        walk = schedule_jump(n, length, repeat)
        # DDNM _check_times: starts descending, ends at -1, steps of 1, within [-1, N]
        assert walk[0] > walk[1] and walk[-1] == -1
        assert all(abs(a - b) == 1 for a, b in zip(walk[:-1], walk[1:]))
        assert min(walk) == -1 and max(walk) <= n
        jumps = len(range(0, n - length, length)) * (repeat - 1)
        assert len(walk) == n + 1 + 2 * length * jumps
        pairs = ddnm_walk(n, T, length, repeat)
        assert sum(j > i for i, j in pairs) == length * jumps  # steps back up: no model call


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("name", ["ddrm", "reddiff", "pigdm"])
def test_uniform_skip_grids(name, n):
    if name == "ddrm":
        # bahjat-kawar/ddrm runners/diffusion.py sample_image:
        #   skip = self.num_timesteps // self.args.timesteps
        #   seq = range(0, self.num_timesteps, skip)
        skip = T // n
        seq = list(range(0, T, skip))
    else:
        # NVlabs/RED-diff utils/functions.py get_timesteps (exp start_step 1000, end_step 0):
        #   skip = (cfg.exp.start_step - cfg.exp.end_step) // cfg.exp.num_steps
        #   ts = list(range(cfg.exp.end_step, cfg.exp.start_step, skip))
        start_step, end_step = T, 0
        skip = (start_step - end_step) // n
        seq = list(range(end_step, start_step, skip))
    assert space_timesteps(T, f"{name}{n}") == seq
    assert TIME_GRIDS.get(name).build(n, T) == seq


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("skip_type", ["uniform", "quad"])
def test_diffpir_grid(skip_type, n):
    # yuanzhi-zhu/DiffPIR main_ddpir_deblur.py (the same lines in _sisr / _inpainting):
    #   if skip_type == 'uniform':
    #       seq = [i*skip for i in range(iter_num)]
    #       if skip > 1:
    #           seq.append(num_train_timesteps-1)
    #   elif skip_type == "quad":
    #       seq = np.sqrt(np.linspace(0, num_train_timesteps**2, iter_num))
    #       seq = [int(s) for s in list(seq)]
    #       seq[-1] = seq[-1] - 1
    iter_num, num_train_timesteps = n, T
    skip = num_train_timesteps // iter_num
    if skip_type == "uniform":
        seq = [i * skip for i in range(iter_num)]
        if skip > 1:
            seq.append(num_train_timesteps - 1)
    else:
        seq = np.sqrt(np.linspace(0, num_train_timesteps**2, iter_num))
        seq = [int(s) for s in list(seq)]
        seq[-1] = seq[-1] - 1
    if len(set(seq)) != len(seq):  # quad at N = 1000 repeats steps: refused with a clear error
        with pytest.raises(ValueError, match="repeats"):
            TIME_GRIDS.get("diffpir").build(n, T, skip_type=skip_type)
        return
    assert TIME_GRIDS.get("diffpir").build(n, T, skip_type=skip_type) == seq


@pytest.mark.parametrize("n", NS)
def test_daps_grid(n):
    # zhangbingliang2019/DAPS cores/scheduler.py EDMScheduler('poly-7'), num_steps + 1 points:
    #   self.time_steps_fn = lambda r: (sigma_max ** (1 / p) + r * (sigma_min ** (1 / p)
    #                                   - sigma_max ** (1 / p))) ** p
    #   steps = np.linspace(0, 1, num_steps); time_steps = self.time_steps_fn(steps)
    #   discretize: sigma_steps = cat([get_sigma(time_steps[:-1]) (float32), zeros(1)])
    sigma_max, sigma_min, p = 100.0, 0.1, 7
    steps = np.linspace(0, 1, n + 1)
    time_steps = (sigma_max ** (1 / p) + steps * (sigma_min ** (1 / p) - sigma_max ** (1 / p))) ** p
    want = np.concatenate([time_steps[:-1].astype(np.float32), np.zeros(1, np.float32)])
    got = TIME_GRIDS.get("daps").build(n, sigma_max, sigma_min, p)
    np.testing.assert_array_equal(got, want)


def test_non_timestep_grids_are_not_respacings():
    with pytest.raises(ValueError, match="not a respacing"):
        space_timesteps(T, "daps20")
    with pytest.raises(ValueError):
        space_timesteps(T, "ddnm0")


def _compvis_ddim(n: int, t: int = 1000):
    """CompVis make_ddim_timesteps ('uniform') + make_ddim_sampling_parameters' index fix, as
    written there: the UNet's timesteps and the alphas' indices."""
    unet = np.asarray(list(range(0, t, t // n))) + 1
    alphas = unet - 1 if unet[-1] == unet.shape[0] else unet
    return alphas.tolist(), unet.tolist()


@pytest.mark.parametrize("n", [1, 2, 7, 10, 250, 500, 501, 999, 1000])
def test_ldm_official_is_the_compvis_ddim_grid(n):
    from jaxdiff.diffusion.time_grids import ldm_official, ldm_uniform

    alphas, unet = ldm_official(n)
    assert (alphas, unet) == _compvis_ddim(n)
    # the default grid agrees with the alphas wherever the UNet is not moved off them ...
    if alphas == unet:
        assert ldm_uniform(n) == alphas
    elif n > 1:  # ... and at stride 1 moves the UNet to the alphas' index
        assert ldm_uniform(n) == alphas == list(range(1000))


def test_ldm_official_refuses_a_grid_past_the_tables():
    from jaxdiff.diffusion.time_grids import ldm_official

    with pytest.raises(ValueError, match="IndexError"):
        ldm_official(3)  # range(0, 1000, 333) + 1 ends at 1000


def test_a_schedule_can_give_the_network_other_timesteps_than_its_tables():
    s = make_schedule(respacing=[0, 1, 2])
    shifted = s.with_model_timesteps([1, 2, 3])
    c = shifted.gather(1, np.float32)
    plain = s.gather(1, np.float32)
    assert int(c["timestep"]) == 2 and int(plain["timestep"]) == 1
    assert float(c["alphas_cumprod"]) == float(plain["alphas_cumprod"])
    assert shifted.with_variance_type("fixed_large").model_timestep_map.tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="model_timestep_map"):
        s.with_model_timesteps([2, 1, 3])
    with pytest.raises(ValueError, match="increase"):
        make_schedule(respacing=[3, 2])
