"""Pluggable control adapters (ControlNet branches, point-track motion prompting, PhysCtrl)."""
