"""The evaluation images of a run: a folder (or a named list of its files) or the demo photos,
decoded once, cropped by the one pipeline (jaxdiff.data.center_crop_resize), in [-1, 1].

`Images.index[i]` is the image's position in the sorted folder listing, undecodable files
included, so a corrupt file never shifts another image's key. `select(..., part)` picks a
process's share of a listing before anything is decoded (several processes, each loading its
own images).
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib

import numpy as np

from jaxdiff import data as jdata

log = logging.getLogger("jaxdiff.images")

# The demo prior's held-out photos (configs/train_demo.py), when its meta does not name them.
DEMO_HELD_OUT = ("astronaut", "chelsea", "coffee")

# Named evaluation lists: `--config.image_list=NAME` runs exactly these files of `--config.data`,
# in this order (matched by file stem, so .png and .jpg copies both work). `ffhq_dps_1k`: the
# DPS paper's FFHQ evaluation set, the first 1000 images of FFHQ's folder 00000 (00000.png ..
# 00999.png; Chung et al. ICLR 2023, as answered in issue #4 of the official repository
# DPS2022/diffusion-posterior-sampling).
IMAGE_LISTS: dict[str, tuple[str, ...]] = {
    "ffhq_dps_1k": tuple(f"{i:05d}.png" for i in range(1000)),
}


def get_list(name: str) -> tuple[str, ...]:
    try:
        return IMAGE_LISTS[name]
    except KeyError:
        raise KeyError(f"unknown image list {name!r}; known: {sorted(IMAGE_LISTS)}") from None


@dataclasses.dataclass
class Images:
    """Decoded images: names, folder positions, (N, S, S, 3) float32 arrays in [-1, 1], and the
    files that could not be decoded ({name: reason})."""

    names: list[str]
    index: list[int]
    arrays: np.ndarray
    skipped: dict[str, str]

    def take(self, rows) -> Images:
        """The images at `rows` (e.g. a process's share); `skipped` is kept whole."""
        rows = list(rows)
        names = [self.names[i] for i in rows]
        index = [self.index[i] for i in rows]
        return Images(names, index, self.arrays[rows], dict(self.skipped) if rows else {})


@dataclasses.dataclass(frozen=True)
class Entry:
    """One image of a listing, not decoded yet: its name, folder position and where it is."""

    name: str
    index: int
    source: object  # a pathlib.Path, or a demo photo's name


def demo_photo_names(meta: dict | None = None) -> tuple[str, ...]:
    """The photos the model never saw: meta["source"]["held_out_photos"] (scripts/train.py)."""
    names = ((meta or {}).get("source") or {}).get("held_out_photos")
    return tuple(names) if names else DEMO_HELD_OUT


def list_entries(source: str, meta: dict | None = None, image_list: str = "") -> list[Entry]:
    """Every image a run could use, in run order: the folder's sorted listing (or the named
    list's files, in the list's order) or the demo photos. Nothing is decoded."""
    if source in ("", "demo"):
        return [Entry(n, i, n) for i, n in enumerate(demo_photo_names(meta))]
    listing = [Entry(p.name, i, p) for i, p in enumerate(jdata.list_images(source))]
    if image_list:
        by_stem = {pathlib.Path(e.name).stem: e for e in listing}
        wanted = [pathlib.Path(n).stem for n in get_list(image_list)]
        absent = [n for n in wanted if n not in by_stem]
        if absent:
            raise FileNotFoundError(
                f"{source}: image list {image_list!r} names {len(absent)} file(s) not in the "
                f"folder, e.g. {absent[:3]}"
            )
        listing = [by_stem[n] for n in wanted]
    return listing


def decode(entries, size: int, limit: int = 0, max_pixels: int = jdata.MAX_PIXELS) -> Images:
    """Decode `entries` at `size` (the first `limit` decodable ones; 0 = all). An undecodable
    file (corrupt, not a regular file, more than `max_pixels` pixels) is named in a warning and
    in `skipped`; the others go on."""
    from jaxdiff import photos

    names, index, arrays, skipped = [], [], [], {}
    for e in entries:
        if limit and len(names) >= limit:
            break
        if isinstance(e.source, pathlib.Path):
            try:
                arrays.append(jdata.load_image(e.source, size, max_pixels))
            except jdata.ImageReadError as err:
                log.warning("skipping %s: %s", e.source, err)
                skipped[e.name] = str(err)
                continue
        else:
            arrays.append(photos.center_crop(e.source, size))
        names.append(e.name)
        index.append(e.index)
    empty = np.zeros((0, size, size, 3), np.float32)
    return Images(names, index, np.stack(arrays) if arrays else empty, skipped)


def load_share(
    source: str,
    size: int,
    limit: int = 0,
    meta: dict | None = None,
    image_list: str = "",
    max_pixels: int = jdata.MAX_PIXELS,
) -> tuple[Images, list[str], dict[str, str]]:
    """This process's share of a run's images, decoded, and every process's names and skipped
    files (one process: all of them). The first `limit` decodable files (0 = all), as
    `load_images`: each round decodes the still missing number of files, split over the
    processes, until there are `limit` images or no files left."""
    from jaxdiff.sharding import allgather_json, process_share

    entries = list_entries(source, meta, image_list)
    parts, names, skipped, start = [], [], {}, 0
    while start < len(entries) and (not limit or len(names) < limit):
        batch = entries[start : start + (limit - len(names) if limit else len(entries))]
        start += len(batch)
        part = decode([batch[i] for i in process_share(len(batch))], size, 0, max_pixels)
        parts.append(part)
        for got in allgather_json({"names": part.names, "skipped": part.skipped}):
            names += got["names"]
            skipped.update(got["skipped"])
    empty = np.zeros((0, size, size, 3), np.float32)
    local = Images(
        [n for p in parts for n in p.names],
        [i for p in parts for i in p.index],
        np.concatenate([p.arrays for p in parts]) if parts else empty,
        {k: v for p in parts for k, v in p.skipped.items()},
    )
    return local, names, skipped


def load_images(
    source: str,
    size: int,
    limit: int = 0,
    meta: dict | None = None,
    image_list: str = "",
    max_pixels: int = jdata.MAX_PIXELS,
) -> Images:
    """Images from a folder (PNG/JPEG, centre-cropped and resized to `size`; `image_list` picks
    named files, a missing one is an error naming it) or "demo" (the model's held-out photos)."""
    images = decode(list_entries(source, meta, image_list), size, limit, max_pixels)
    if not images.names:
        raise ValueError(f"no decodable images in {source} (skipped: {sorted(images.skipped)})")
    return images


__all__ = [
    "DEMO_HELD_OUT",
    "IMAGE_LISTS",
    "Entry",
    "Images",
    "decode",
    "demo_photo_names",
    "get_list",
    "list_entries",
    "load_images",
    "load_share",
]
