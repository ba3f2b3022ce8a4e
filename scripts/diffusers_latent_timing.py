"""The diffusers PyTorch side of `python -m scripts.benchmark --latent`: run with an interpreter
that has torch + diffusers (never jaxdiff's), given the cases as one JSON argument; prints one
JSON line {"versions": ..., "cases": {case: {"min_s", "median_s"}}}.

    TORCH_PYTHON scripts/diffusers_latent_timing.py '{"unet": {...}, "vae": {...}, ...}'
"""

import json
import statistics
import sys
import time


def main(spec: dict) -> dict:
    import diffusers
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**spec["unet"]).eval()
    vae = AutoencoderKL(**spec["vae"]).eval()
    b, s = spec["batch"], spec["latent_size"]
    z = torch.randn(b, 4, s, s)
    x = torch.rand(b, 3, 8 * s, 8 * s) * 2 - 1
    context = torch.randn(b, spec["tokens"], spec["unet"]["cross_attention_dim"])
    t = torch.full((b,), 500)
    w = torch.randn(b, 3, 8 * s, 8 * s)

    def decode_grad():
        zz = z.clone().requires_grad_(True)
        (vae.decode(zz).sample * w).sum().backward()
        return zz.grad

    cases = {
        "unet_forward": lambda: unet(z, t, encoder_hidden_states=context).sample,
        "vae_encode": lambda: vae.encode(x).latent_dist.mean,
        "vae_decode": lambda: vae.decode(z).sample,
        "vae_decode_grad": decode_grad,
    }
    out = {}
    for name in spec["cases"]:
        fn = cases[name]
        grad = name.endswith("_grad")
        with torch.set_grad_enabled(grad):
            fn()  # warm-up
            times = []
            for _ in range(spec["repeats"]):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        out[name] = {"min_s": min(times), "median_s": statistics.median(times)}
    versions = {"torch": torch.__version__, "diffusers": diffusers.__version__}
    versions["threads"] = torch.get_num_threads()
    return {"versions": versions, "cases": out}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
