"""Named evaluation image lists: `--config.image_list=NAME` runs exactly these files of
`--config.data`, in this order (matched by file stem, so .png and .jpg copies both work).

`ffhq_dps_1k`: the DPS paper's FFHQ evaluation set, the first 1000 images of FFHQ's folder 00000
(00000.png .. 00999.png; Chung et al. ICLR 2023, as answered in issue #4 of the official
repository DPS2022/diffusion-posterior-sampling). Point `--config.data` at that folder.
"""

from __future__ import annotations

IMAGE_LISTS: dict[str, tuple[str, ...]] = {
    "ffhq_dps_1k": tuple(f"{i:05d}.png" for i in range(1000)),
}


def get_list(name: str) -> tuple[str, ...]:
    try:
        return IMAGE_LISTS[name]
    except KeyError:
        raise KeyError(f"unknown image list {name!r}; known: {sorted(IMAGE_LISTS)}") from None
