"""The search: the SDARTS step (perturbations, the alpha step of either order), its compiled
forms, optimizers, the Hessian, the derived genotype, and the search run."""
