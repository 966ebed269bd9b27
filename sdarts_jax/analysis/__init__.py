"""Analyses of search runs: Hessian trajectories, the theory check, plots."""
