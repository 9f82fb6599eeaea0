"""Networks: the velocity MLP for low-dimensional flows (mlp) and the video model family."""
