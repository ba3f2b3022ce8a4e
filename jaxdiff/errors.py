"""Exceptions that callers may need to tell apart; each message names the file, key or step."""

from __future__ import annotations


class JaxdiffError(Exception):
    """Base class of jaxdiff's own errors."""


class CheckpointError(JaxdiffError, ValueError):
    """A checkpoint file or folder is corrupt, truncated, or not a checkpoint at all."""


class UnsafePickleError(CheckpointError):
    """A pickle asked for a global outside the state-dict allow-list; nothing was executed."""


class KeyMismatchError(CheckpointError):
    """A state dict does not match the architecture: every missing, unexpected, mis-shaped key."""

    def __init__(
        self,
        what: str,
        missing: list[str] = (),
        unexpected: list[str] = (),
        shape_mismatches: list[tuple[str, tuple, tuple]] = (),
    ):
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.shape_mismatches = list(shape_mismatches)
        lines = [f"{what}: the checkpoint does not match the architecture"]
        if self.missing:
            lines.append(f"  missing keys ({len(self.missing)}): " + ", ".join(self.missing))
        if self.unexpected:
            n = len(self.unexpected)
            lines.append(f"  unexpected keys ({n}): " + ", ".join(self.unexpected))
        for key, got, want in self.shape_mismatches:
            lines.append(f"  shape mismatch {key}: checkpoint {tuple(got)}, model {tuple(want)}")
        super().__init__("\n".join(lines))


class DivergenceError(JaxdiffError, FloatingPointError):
    """A sampler produced NaN or Inf; the message names the images and the step."""


class NotFIDInceptionError(CheckpointError):
    """A file or folder given as the FID Inception is not pytorch-fid's FID InceptionV3."""


class ConfigError(JaxdiffError, ValueError):
    """A run's config or inputs are unusable; raised before anything is written."""


class RunLockedError(JaxdiffError, RuntimeError):
    """Another process is writing the same workdir."""
