"""Deterministic train / held-out splits of a video collection by file name."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from rvm_core.data.video import list_videos

# Held-out real camera clips of the fetched sample set (data/real, see fetch_sample_videos.sh):
# diverse content, none with a near-duplicate on the train side (carphone_* pair, idtrackerai
# test_A/B pair and both Big Buck Bunny files all stay together in train).
DEFAULT_HELDOUT: tuple[str, ...] = (
    "vtest.avi",
    "cockatoo.mp4",
    "bikes.mp4",
    "cityCC0.mpg",
)


def is_heldout(path: str | Path, heldout: str | re.Pattern[str] | Sequence[str]) -> bool:
    """True if the file/folder name matches `heldout` (regex, or names / glob patterns)."""
    name = Path(path).name
    if isinstance(heldout, (str, re.Pattern)):
        return re.search(heldout, name) is not None
    return any(fnmatch.fnmatchcase(name, pat) for pat in heldout)


def split_heldout(
    paths_or_dirs: str | Path | Iterable[str | Path],
    heldout: str | re.Pattern[str] | Sequence[str] = DEFAULT_HELDOUT,
) -> tuple[list[Path], list[Path]]:
    """Split the expanded video list into (train, held_out), both sorted (deterministic)."""
    paths = list_videos(paths_or_dirs)
    held = [p for p in paths if is_heldout(p, heldout)]
    train = [p for p in paths if not is_heldout(p, heldout)]
    return train, held
