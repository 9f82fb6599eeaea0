"""wmgen: controllable video world models (latent-video flow matching, control adapters, physics worlds)."""

__version__ = "0.1.0"
