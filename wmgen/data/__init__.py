"""Datasets: 2-D toy distributions (toy2d), simulated worlds and video folders."""
