"""Training recipes, one module per recipe (toy2d: 2-D flow matching; vae, flow, adapters, ...)."""
