"""Weight importers: released checkpoints of other codebases as this codebase's parameter trees."""
