"""Evaluation: measure how well generated videos obey their controls (point tracks first)."""

from wmgen.eval.tracks import (
    COTRACKER_MODELS,
    TRACKERS,
    CoTrackerTracker,
    LucasKanadeTracker,
    PointTracker,
    make_tracker,
    queries_from_tracks,
    track_epe,
)

__all__ = [
    "COTRACKER_MODELS",
    "TRACKERS",
    "CoTrackerTracker",
    "LucasKanadeTracker",
    "PointTracker",
    "make_tracker",
    "queries_from_tracks",
    "track_epe",
]
