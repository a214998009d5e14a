"""Sweeps: grids of fits run locally (wandb-sweep compatible configs), collected into one table."""
