"""Experiment trackers beside the run folder: MLflow (``logger=mlflow``), live and from finished folders;
Weights & Biases (``logger=wandb``); several at once (``logger=[mlflow,wandb]``).

- :mod:`.registry`: the trackers by name, each with the schema of its settings (``conf/logger/NAME.yaml``);
- :mod:`.trackers`: the run's trackers as one list;

- :mod:`.record`: what a run records (params, metric points, final figures, tags, artifacts), read from
  what the run folder holds; no MLflow import;
- :mod:`.client`: the MLflow calls (experiments, runs continued from a folder's ``mlflow.json``, batches);
- :mod:`.live`: the training run's logging on a worker thread, and a sweep's parent run;
- :mod:`.upload`: ``cnnbench track RUN_OR_SWEEP_DIR``, the same records from finished folders.
"""
