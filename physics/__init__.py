"""Simulated worlds: differentiable simulators, renderer with ground truth, constraints. Imports nothing from wmgen."""
