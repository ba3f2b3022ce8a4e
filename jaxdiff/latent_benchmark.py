"""Time the Stable-Diffusion-1.5-sized UNet and VAE (random weights) in jaxdiff and, in the same
run, the same networks in diffusers PyTorch (`python -m scripts.benchmark --latent`).

Cases: the UNet forward (latents, timesteps, a 77-token text context), the VAE encoder and
decoder forwards, the gradient through the decoder (what latent posterior samplers take each
step), and one whole step of each latent sampler (`SAMPLER_CASES`: Latent DPS, PSLD on SR x8 of
the decoded image, rows carrying their UNet / decoder / encoder calls per step). Per case on the
jaxdiff side: compile seconds, min / median seconds per call over `repeats` timed calls after a
warm-up, XLA's FLOPs (cost analysis) and its compiled temporary memory. The PyTorch side runs
in a separate interpreter (`torch_python`, with torch + diffusers: never a dependency of
jaxdiff) on `scripts/diffusers_latent_timing.py`, given the same configs and shapes (the
network cases only); each row's `torch_over_jax` is the ratio of the minima.
"""

from __future__ import annotations

import json
import pathlib
import platform
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import xla_options
from jaxdiff.models import abstract_params, build_model, param_count

# runwayml/stable-diffusion-v1-5 unet/config.json and vae/config.json (diffusers defaults else)
SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
SD_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
CASES = ("unet_forward", "vae_encode", "vae_decode", "vae_decode_grad")
# one step of each latent posterior sampler (jaxdiff only): super-resolution x8 of the decoded
# image; per step 1 UNet call and, through the gradient, its backward, the decoder forward and
# backward, and for PSLD the encoder forward and backward
SAMPLER_CASES = {
    "latent_dps_step": {"nfe": 1, "decoder_calls": 1, "encoder_calls": 0},
    "psld_step": {"nfe": 1, "decoder_calls": 1, "encoder_calls": 1},
}
TOKENS = 77
_HERE = pathlib.Path(__file__).resolve().parent
# scripts/ in a checkout, jaxdiff/scripts/ once installed
TORCH_SCRIPTS = (
    _HERE.parent / "scripts" / "diffusers_latent_timing.py",
    _HERE / "scripts" / "diffusers_latent_timing.py",
)


def random_params(arch: str, config: dict, seed: int = 0) -> dict:
    """Random float32 parameters from the abstract tree (norm scales around 1): no init compile."""
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        mean = 1.0 if path[-1].key == "scale" else 0.0
        return jnp.asarray(mean + 0.02 * rng.standard_normal(s.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(leaf, abstract_params(arch, config))


def jax_cases(latent_size: int, batch: int) -> dict:
    """{case: (function, args)} on random weights and inputs."""
    unet, vae = build_model("sd_unet", SD15_UNET), build_model("autoencoder_kl", SD_VAE)
    up, vp = random_params("sd_unet", SD15_UNET), random_params("autoencoder_kl", SD_VAE, 1)
    keys = jax.random.split(jax.random.key(0), 4)
    s, image = latent_size, 8 * latent_size
    z = jax.random.normal(keys[0], (batch, s, s, 4))
    x = jax.random.uniform(keys[1], (batch, image, image, 3), minval=-1, maxval=1)
    context = jax.random.normal(keys[2], (batch, TOKENS, SD15_UNET["cross_attention_dim"]))
    t = jnp.full((batch,), 500, jnp.int32)
    w = jax.random.normal(keys[3], (batch, image, image, 3))

    def decode_loss(p, z):
        return jnp.sum(vae.apply({"params": p}, z, method="decode") * w)

    cases = {
        "unet_forward": (
            lambda p, z, t, c: unet.apply({"params": p}, z, t, c),
            (up, z, t, context),
        ),
        "vae_encode": (lambda p, x: vae.apply({"params": p}, x, method="encode"), (vp, x)),
        "vae_decode": (lambda p, z: vae.apply({"params": p}, z, method="decode"), (vp, z)),
        "vae_decode_grad": (jax.grad(decode_loss, argnums=1), (vp, z)),
    }
    for name in SAMPLER_CASES:
        cases[name] = sampler_step(name, unet, vae, up, vp, z, context[0])
    return cases


def sampler_step(name: str, unet, vae, up, vp, z, context):
    """(function, args) of one step (respacing "ldm1") of the latent sampler `name` on a batch."""
    from jaxdiff.diffusion import make_schedule
    from jaxdiff.operators import get_noise, get_operator
    from jaxdiff.samplers import batched, get_sampler
    from jaxdiff.samplers.latent_common import LatentFns

    b = z.shape[0]

    def decode(p, zz):
        return vae.apply({"params": p["first_stage"]}, zz[None], method="decode_latents")[0]

    def encode(p, x, noise=None):
        return vae.apply({"params": p["first_stage"]}, x[None], method="encode_latents")[0]

    def model_fn(p, zz, t):
        ctx = jnp.broadcast_to(p["context"], (zz.shape[0], *p["context"].shape))
        return unet.apply({"params": p["unet"]}, zz, t, ctx)

    params = {"unet": up, "first_stage": vp, "context": context}
    image = tuple(jax.eval_shape(decode, params, z[0]).shape)
    fns = LatentFns(decode, encode, tuple(z.shape[1:]), image, True)
    op = get_operator("super_resolution", image_shape=image, factor=8)
    sample = get_sampler(name.removesuffix("_step"))(
        model_fn, make_schedule(1000, respacing="ldm1"), operator=op,
        noise=get_noise("gaussian", sigma=0.05), latent=fns,
    )  # fmt: skip
    keys = jax.random.split(jax.random.key(1), b)
    y = jnp.zeros((b, image[0] // 8, image[1] // 8, 3))
    return batched(sample, shared_op_params=True), (params, keys, y, {})


def time_jax(fn, args, repeats: int) -> dict:
    t0 = time.perf_counter()
    compiled = xla_options.compile_lowered(jax.jit(fn).lower(*args))
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    memory = compiled.memory_analysis()
    jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return {
        "compile_s": compile_s,
        "min_s": min(times),
        "median_s": float(np.median(times)),
        "flops": float(cost.get("flops", 0.0)) if cost else None,
        "temp_bytes": int(memory.temp_size_in_bytes) if memory is not None else None,
    }


def time_torch(torch_python: str, latent_size: int, batch: int, repeats: int) -> dict:
    """The same cases in diffusers PyTorch, in `torch_python` (a separate process)."""
    spec = {
        "unet": SD15_UNET, "vae": SD_VAE, "latent_size": latent_size, "batch": batch,
        "repeats": repeats, "tokens": TOKENS, "cases": list(CASES),
    }  # fmt: skip
    script = next((p for p in TORCH_SCRIPTS if p.is_file()), TORCH_SCRIPTS[0])
    proc = subprocess.run(
        [torch_python, str(script), json.dumps(spec)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"{torch_python} {script.name} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(
    latent_size=32, batch=1, repeats=3, torch_python=None, cases=(*CASES, *SAMPLER_CASES),
    log=print,
) -> dict:  # fmt: skip
    """Every case in jaxdiff, then (with `torch_python`) in diffusers; rows with both."""
    built = jax_cases(latent_size, batch)
    rows = []
    for case in cases:
        fn, args = built[case]
        row = {"case": case, "latent_size": latent_size, "batch": batch, "jax": None}
        row["jax"] = time_jax(fn, args, repeats)
        row.update(SAMPLER_CASES.get(case, {}))  # per step: UNet, decoder, encoder calls
        r = row["jax"]
        log(f"jax   {case}: {r['min_s']:.3f} s (min), compile {r['compile_s']:.1f} s")
        rows.append(row)
    if torch_python:
        torch = time_torch(torch_python, latent_size, batch, repeats)
        for row in rows:
            row["torch"] = torch["cases"].get(row["case"])
            if row["torch"]:
                row["torch_over_jax"] = row["torch"]["min_s"] / row["jax"]["min_s"]
                log(f"torch {row['case']}: {row['torch']['min_s']:.3f} s (min), "
                    f"torch / jax = {row['torch_over_jax']:.2f}")  # fmt: skip
    return {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "jax_backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()],
        },
        "parameters": {
            "sd_unet": param_count(abstract_params("sd_unet", SD15_UNET)),
            "autoencoder_kl": param_count(abstract_params("autoencoder_kl", SD_VAE)),
        },
        "rows": rows,
    }
