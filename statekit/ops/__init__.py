"""Operations above the engines: jobs, hooks, metrics and restore rehearsal."""
