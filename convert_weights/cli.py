"""``python -m convert_weights SRC --out DIR``: a PyTorch diffusion UNet -> a jaxdiff checkpoint.

Argument parsing and the one-line exits only; the conversion is `jaxdiff.convert.core.convert`.
Exit status: 0 written; 2 bad input or a failed write (one line on stderr; --debug for the
traceback), nothing left at --out; 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from jaxdiff.convert.core import convert
from jaxdiff.errors import CheckpointError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m convert_weights",
        description="Convert a guided-diffusion (ADM) .pt or a diffusers UNet2DModel folder "
        "into a jaxdiff checkpoint folder (orbax params + jaxdiff.json).",
    )
    p.add_argument(
        "src",
        help="ADM .pt/.pth/.bin file, diffusers folder with config.json, diffusers pipeline "
        "folder (model_index.json), or an original Stable Diffusion / LDM .ckpt / .safetensors",
    )
    p.add_argument("--out", required=True, help="output checkpoint folder")
    arch = p.add_mutually_exclusive_group()
    arch.add_argument("--preset", help="ADM architecture preset, e.g. ffhq256, imagenet256_uncond")
    arch.add_argument(
        "--config",
        help="ADM architecture JSON: guided-diffusion create_model flags, UNetModel kwargs, "
        'or {"kwargs": {...}}; default: inferred from the checkpoint',
    )
    p.add_argument("--key", help="entry holding the state dict in a nested file, e.g. 'ema'")
    p.add_argument(
        "--config_folder",
        help="for a Stable Diffusion single file: a diffusers pipeline folder of the same model, "
        "whose config.json files lay out its weights",
    )
    p.add_argument(
        "--vq_config", help="for a CompVis LDM .ckpt: the first stage's VQModel config.json"
    )
    p.add_argument(
        "--kind",
        choices=("diffusion", "fid_inception"),
        help="what SRC must be; default: recognised by its keys (pytorch-fid's "
        "pt_inception-2015-12-05-6726825d.pth is converted for FID/KID)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing --out checkpoint")
    p.add_argument(
        "--allow_large_weights",
        action="store_true",
        help="accept weights above 1e5 in magnitude (refused by default: corrupted files decode "
        "to such values; no trained diffusion UNet has them)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


EXIT_BAD_INPUT = 2


class Interrupted(BaseException):
    """SIGTERM, turned into an exception so the temporary folder is cleaned like on Ctrl-C."""


def _raise_interrupted(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        meta = convert(
            args.src,
            args.out,
            preset=args.preset,
            config=args.config,
            key=args.key,
            force=args.force,
            progress=not args.quiet,
            kind=args.kind,
            allow_large_weights=args.allow_large_weights,
            config_folder=args.config_folder,
            vq_config=args.vq_config,
        )
    except (CheckpointError, ValueError, KeyError, OSError) as e:  # bad input, a full disk
        if args.debug:
            raise
        msg = " ".join(str(e.args[0] if isinstance(e, KeyError) and e.args else e).split("\n"))
        sys.stdout.flush()
        print(f"convert_weights: error: {msg}", file=sys.stderr)
        sys.stderr.flush()
        if argv is None:  # the command line: the one line is the last (no orbax thread noise)
            os._exit(EXIT_BAD_INPUT)
        return EXIT_BAD_INPUT
    except (KeyboardInterrupt, Interrupted) as e:
        # save_pretrained has removed its temporary folder; nothing was written at --out.
        what = "SIGINT" if isinstance(e, KeyboardInterrupt) else e.args[0]
        print(f"convert_weights: interrupted ({what}); nothing written", file=sys.stderr)
        sys.stderr.flush()
        if argv is None:  # the command line: exit now, before orbax's worker threads complain
            os._exit(130)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if "components" in meta:  # a diffusers pipeline folder: one sub-folder per component
        parts = [f"{n} ({c.get('architecture', 'files')})" for n, c in meta["components"].items()]
        print(f"wrote {Path(args.out).absolute()}: {meta['pipeline']}: {', '.join(parts)}")
        return 0
    if meta["architecture"] == "fid_inception":
        print(
            f"wrote {Path(args.out).absolute()}: FID InceptionV3, {meta['num_parameters']:,} "
            f"parameters from {meta['source']['file']} ({meta['source']['format']}); use it "
            f"with --config.metrics.inception={args.out}"
        )
        return 0
    variance = meta["diffusion"].get("variance_type")
    print(
        f"wrote {Path(args.out).absolute()}: {meta['architecture']}, "
        f"{meta['num_parameters']:,} parameters from {meta['source']['file']} "
        f"({meta['source']['format']})" + (f", variance {variance}" if variance else "")
    )
    return 0


def console() -> None:
    """The console entry point. argparse, not absl: `main` returns the exit code, and reads
    sys.argv itself (argv=None is what lets an interrupt exit at once, see `main`)."""
    sys.exit(main())


if __name__ == "__main__":
    console()
