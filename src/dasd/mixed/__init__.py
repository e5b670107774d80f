"""Mixed-policy distillation (spec §7): cut truncated student rollouts, let the teacher continue, assemble."""
