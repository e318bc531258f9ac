"""The command line's commands beyond the dispatcher (cnnbench.cli): train's Hydra entry and pre-launch checks
(launch), sweeps, bench."""
