"""Evaluation: measure how well generated videos obey their controls (point tracks first)."""

from wmgen.eval.tracks import (
    COLOR_MOTIONS,
    COTRACKER_MODELS,
    TRACKERS,
    ColorObjectTracker,
    CoTrackerTracker,
    LucasKanadeTracker,
    PointTracker,
    make_tracker,
    queries_from_tracks,
    track_epe,
)

__all__ = [
    "COLOR_MOTIONS",
    "COTRACKER_MODELS",
    "TRACKERS",
    "ColorObjectTracker",
    "CoTrackerTracker",
    "LucasKanadeTracker",
    "PointTracker",
    "make_tracker",
    "queries_from_tracks",
    "track_epe",
]
