"""Flow-matching math: probability paths, time schedules, ODE/SDE solvers, guidance, likelihood, views.

Model-agnostic: everything is a velocity function ``v(x [B, ...], t [B]) -> [B, ...]``. Imports torch only.
"""
