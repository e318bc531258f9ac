"""One training run: settings checked (validate), built (build), trained (train, loop), checkpointed and
resumed, selected, summarized."""
