"""The run folder: its file names, its lock, its logs and TensorBoard events, and disk-space handling."""
