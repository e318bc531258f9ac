"""Break one promise at a time and check that a test notices: a small, hand-written mutation table.

    python scripts/check_mutations.py            # every mutation (a few minutes on 2 cores)
    python scripts/check_mutations.py resume     # only those whose name contains "resume"
    python scripts/check_mutations.py --list

Each entry replaces one exact piece of code (it must occur once in its file), runs the tests that
guard it, restores the file and reports RED (a test failed: good), SURVIVED (no test noticed: a
test to write), ERROR (the tests could not even run: not a verdict) or MOVED (the code it names is
not there: update the entry where the code went). The exit status is 1 unless every one is RED. Run it after a refactor to show the suite still
guards every promise listed here; add an entry with each test that guards a new promise.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str  # what promise breaks
    path: str  # file, relative to the repository
    old: str  # exact code, found once in the file
    new: str  # its broken replacement
    tests: tuple[str, ...]  # pytest arguments selecting the tests that must go red


MUTATIONS: tuple[Mutation, ...] = (
    # ---- resume and checkpoints
    Mutation("resume restores the optimizer", "cnnbench/checkpoint.py",
             '        run.optimizer.load_state_dict(state["optimizer"])', "        pass",
             ("tests/test_reliability.py", "-k", "given_checkpoint or kill_and_resume")),
    Mutation("resume restores the scheduler", "cnnbench/checkpoint.py",
             '        run.scheduler.load_state_dict(state["scheduler"])', "        pass",
             ("tests/test_reliability.py", "-k", "given_checkpoint or kill_and_resume")),
    Mutation("checkpoints restore Python's RNG", "cnnbench/checkpoint.py",
             '    random.setstate(_python_state_from_plain(state["python"]))', "    pass",
             ("tests/test_reliability.py", "-k", "plain_data")),
    Mutation("last.pt after every epoch", "cnnbench/train.py",
             "    if cfg.trainer.checkpoint and run.dist.is_main:",
             "    if cfg.trainer.checkpoint and run.dist.is_main and epoch % 2 == 0:",
             ("tests/test_reliability.py", "-k", "last_pt")),
    Mutation("a resumed sweep continues an interrupted job", "cnnbench/sweeps.py",
             '            cfg.trainer.resume = "auto"', "            cfg.trainer.resume = None",
             ("tests/test_sweeps.py", "-k", "continues_an_interrupted")),
    Mutation("a rerun sweep job keeps its previous summary", "cnnbench/sweeps.py",
             "    shutil.copyfile(summary_path, run_dir / PREVIOUS_SUMMARY)",
             '    (run_dir / PREVIOUS_SUMMARY).write_text("{}")',
             ("tests/test_sweeps.py", "-k", "skips_completed")),
    # ---- signals
    Mutation("SIGUSR2 stops gracefully", "cnnbench/signals.py",
             'signal.SIGTERM, getattr(signal, "SIGUSR2", None)', "signal.SIGTERM",
             ("tests/test_reliability.py", "-k", "each_stop_signal and SIGUSR2")),
    Mutation("SIGINT stops gracefully", "cnnbench/signals.py",
             "(signal.SIGINT, signal.SIGTERM,", "(signal.SIGTERM,",
             ("tests/test_reliability.py", "-k", "each_stop_signal and SIGINT")),
    Mutation("a second signal stops at once", "cnnbench/signals.py",
             "        if self.signum is not None:", "        if False:",
             ("tests/test_reliability.py", "-k", "second_signal")),
    # ---- the loop
    Mutation("gradient clipping", "cnnbench/engine.py",
             "    loss.backward()\n    if grad_clip_norm:\n        nn.utils.clip_grad_norm_(",
             "    loss.backward()\n    if False:\n        nn.utils.clip_grad_norm_(",
             ("tests/test_reliability.py", "-k", "grad_clip")),
    Mutation("only rank 0 writes the run folder", "cnnbench/train.py",
             "rlog = RunLogger(run_dir, enabled=main,", "rlog = RunLogger(run_dir, enabled=True,",
             ("tests/test_distributed.py", "-k", "two_processes")),
    # ---- speed options
    Mutation("channels_last reaches model and batches", "cnnbench/build.py",
             "    if speed.channels_last:", "    if False:",
             ("tests/test_speed.py", "-k", "takes_effect and channels_last")),
    Mutation("fused optimizer steps", "cnnbench/optim.py",
             '(cfg, params, {"fused": True} if fused else {})', "(cfg, params, {})",
             ("tests/test_speed.py", "-k", "takes_effect and fused")),
    Mutation("device.num_threads", "cnnbench/build.py",
             "        torch.set_num_threads(int(cfg.device.num_threads))", "        pass",
             ("tests/test_speed.py", "-k", "num_threads")),
    Mutation("bf16 autocast", "cnnbench/engine.py",
             '        if self.name == "fp32":', "        if True:",
             ("tests/test_speed.py", "-k", "takes_effect and bf16")),
    Mutation("autotune keeps the fastest candidate", "cnnbench/speed.py",
             "    best = max(candidates, key=", "    best = min(candidates, key=",
             ("tests/test_speed.py", "-k", "autotune")),
    Mutation("device.index reaches the device choice", "cnnbench/build.py",
             'cfg.device.type, cfg.device.get("index"))', "cfg.device.type, None)",
             ("tests/test_speed.py", "-k", "device_index")),
    Mutation("device.index is taken modulo the GPU count", "cnnbench/devices.py",
             "0 if index is None else int(index) % torch.cuda.device_count()", "0",
             ("tests/test_speed.py", "-k", "device_index")),
    # ---- CPU speed, round two (issue 17): names start with "cpu:"
    Mutation("cpu: malloc tuning is applied once per process", "cnnbench/allocator.py",
             "    if _applied is not None:\n        return _applied", "    if False:\n        return _applied",
             ("tests/test_allocator.py", "-k", "once_per_process")),
    Mutation("cpu: mallopt gets the tuned values", "cnnbench/allocator.py",
             "if mallopt(param, value) != 1]", "if mallopt(param, 0) != 1]",
             ("tests/test_allocator.py", "-k", "once_per_process or real_mallopt")),
    Mutation("cpu: device.malloc_tuning=false leaves malloc alone", "cnnbench/allocator.py",
             "    if not enabled:\n", "    if False:\n",
             ("tests/test_allocator.py", "-k", "off_switch")),
    Mutation("cpu: the switch reaches the allocator", "cnnbench/build.py",
             'tune_malloc(bool(cfg.device.get("malloc_tuning", True)))', "tune_malloc(True)",
             ("tests/test_allocator.py", "-k", "changes_no_result")),
    Mutation("cpu: a run tunes malloc before reading its data", "cnnbench/build.py",
             '    tune_malloc(bool(cfg.device.get("malloc_tuning", True)))  #', "    pass  #",
             ("tests/test_allocator.py", "-k", "before_reading")),
    Mutation("cpu: no mallopt off glibc", "cnnbench/allocator.py",
             '    if not sys.platform.startswith("linux"):\n        return None', "    if False:\n        return None",
             ("tests/test_allocator.py", "-k", "off_glibc")),
    Mutation("cpu: fast pooling forward is exact", "cnnbench/cpu_kernels.py",
             ".add_(x[..., 1::2, 1::2]).mul_(0.25)", ".add_(x[..., 1::2, 1::2]).mul_(0.2500001)",
             ("tests/test_cpu_kernels.py", "-k", "exactly")),
    Mutation("cpu: fast pooling backward is exact", "cnnbench/cpu_kernels.py",
             "        quarter = grad * 0.25", "        quarter = grad * 0.2500001",
             ("tests/test_cpu_kernels.py", "-k", "exactly")),
    Mutation("cpu: an odd row gets no gradient", "cnnbench/cpu_kernels.py",
             "            out.zero_()", "            pass",
             ("tests/test_cpu_kernels.py", "-k", "exactly")),
    Mutation("cpu: only 2x2/stride-2 pools are swapped", "cnnbench/cpu_kernels.py",
             "and not m.ceil_mode and", "and",
             ("tests/test_cpu_kernels.py", "-k", "only_2x2")),
    Mutation("cpu: the run trains with the fast pools", "cnnbench/speed.py",
             "settings.fast_pooling = use_fast_pooling(model) > 0", "settings.fast_pooling = True",
             ("tests/test_cpu_kernels.py", "-k", "switch_turns_it_off")),
    Mutation("cpu: device.fast_pooling=false keeps ATen's pool", "cnnbench/speed.py",
             'cfg.get("fast_pooling", True) and', "True and",
             ("tests/test_cpu_kernels.py", "-k", "switch_turns_it_off")),
    Mutation("cpu: the command sets a passive OpenMP wait", "cnnbench/cli.py",
             "    passive_omp_wait()  #", "    pass  #",
             ("tests/test_threads.py",)),
    Mutation("cpu: the user's OMP_WAIT_POLICY wins", "cnnbench/threads.py",
             'if "OMP_WAIT_POLICY" not in os.environ and', "if",
             ("tests/test_threads.py", "-k", "ACTIVE")),
    Mutation("cpu: compiled only for full training batches", "cnnbench/compiling.py",
             "        if self.training and x.shape[0] == self.batch_size and torch.is_grad_enabled():",
             "        if True:",
             ("tests/test_compiling.py", "-k", "full_training")),
    Mutation("cpu: compiled graphs come from the cache the next run", "cnnbench/speed.py",
             'cfg.get("fast_pooling", True) and not settings.compile:', 'cfg.get("fast_pooling", True):',
             ("tests/test_speed.py", "-k", "compile")),
    Mutation("cpu: the compile cache folder reaches Inductor", "cnnbench/compiling.py",
             "    os.environ[CACHE_ENV] = str(path)", "    pass",
             ("tests/test_compiling.py", "-k", "cache_folder")),
    Mutation("bench falls back to generated data", "cnnbench/bench.py",
             "        if root is None:", "        if False:",
             ("tests/test_speed.py", "-k", "falls_back")),
    # ---- the book's loop (the speed baseline)
    Mutation("the book's loop steps its optimizer", "cnnbench/book.py",
             "            optimizer.step()", "            pass",
             ("tests/test_book.py", "-k", "hand_computed or learns")),
    Mutation("the book's loop sums loss times batch size", "cnnbench/book.py",
             "                loss_sum += float(l * X.shape[0])", "                loss_sum += float(l)",
             ("tests/test_book.py", "-k", "hand_computed")),
    Mutation("the book's loop applies Xavier init", "cnnbench/book.py",
             "    net.apply(init_weights)", "    pass",
             ("tests/test_book.py", "-k", "hand_computed")),
    # ---- checks before launch
    Mutation("optimizer and schedule names are checked before launch", "cnnbench/validate.py",
             "    _check_names(cfg)\n", "    pass\n",
             ("tests/test_optim.py", "-k", "refused_before")),
    Mutation("an output folder that cannot be made is refused", "cnnbench/validate.py",
             'tempfile.mkdtemp(prefix=".cnnbench-write-check-", dir=existing)',
             'tempfile.mkdtemp(prefix=".cnnbench-write-check-")',
             ("tests/test_reliability.py", "-k", "virtual_file_system")),
    # ---- describing models, finding data
    Mutation("FLOPs are per image", "cnnbench/describe.py",
             "    return int(counter.get_total_flops())", "    return int(counter.get_total_flops()) // 2",
             ("tests/test_describe.py",)),
    Mutation("models PATTERN filters", "cnnbench/cli.py",
             "    print(models_table(ns.pattern))", "    print(models_table(None))",
             ("tests/test_cli.py", "-k", "pattern")),
    Mutation("./data is searched", "cnnbench/data/idx.py",
             'os.environ.get("CNNBENCH_DATA"), "data", Path.home()', 'os.environ.get("CNNBENCH_DATA"), Path.home()',
             ("tests/test_data.py", "-k", "local_data or order")),
    Mutation("gzipped IDX files are found", "cnnbench/data/idx.py",
             'for path in (folder / name, folder / f"{name}{GZIP_SUFFIX}"):', "for path in (folder / name,):",
             ("tests/test_data.py", "-k", "gzip")),
    Mutation("a plain IDX file wins over its .gz", "cnnbench/data/idx.py",
             'for path in (folder / name, folder / f"{name}{GZIP_SUFFIX}"):',
             'for path in (folder / f"{name}{GZIP_SUFFIX}", folder / name):',
             ("tests/test_data.py", "-k", "preferred")),
    Mutation("a damaged .gz is one DataError", "cnnbench/data/idx.py",
             "    except (OSError, EOFError, zlib.error) as exc:", "    except () as exc:",
             ("tests/test_data.py", "-k", "damaged")),
    Mutation("the batch check reads a .gz header", "cnnbench/validate.py",
             "with open_idx(labels) as f:", 'with labels.open("rb") as f:',
             ("tests/test_data.py", "-k", "batch_check")),
    Mutation("bench gives the book's reader plain copies", "cnnbench/bench.py",
             '    if plain and found.name == "raw"', '    if found.name == "raw"',
             ("tests/test_speed.py", "-k", "gzipped")),
    # ---- several processes and nodes
    Mutation("each rank takes its own shard of the batch", "cnnbench/data/loader.py",
             "idx = idx.tensor_split(self.world_size)[self.rank]", "idx = idx.tensor_split(self.world_size)[0]",
             ("tests/test_multinode.py", "-k", "same_global_batch")),
    Mutation("a stop signal on one node reaches every rank", "cnnbench/distributed.py",
             "    if not ctx.enabled:\n        return flag", "    if True:\n        return flag",
             ("tests/test_multinode.py", "-k", "sigterm")),
)


def run(m: Mutation) -> tuple[str, str]:
    """Apply ``m``, run its tests, restore the file; (verdict, pytest's last line)."""
    path = REPO / m.path
    original = path.read_text()
    if original.count(m.old) != 1:
        return "MOVED", f"{m.old.strip()[:60]!r} occurs {original.count(m.old)} times in {m.path}"
    path.write_text(original.replace(m.old, m.new))
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *m.tests],
                              cwd=REPO, capture_output=True, text=True, timeout=1800)
    finally:
        path.write_text(original)
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    if proc.returncode == 5:
        return "NO TESTS", last
    if proc.returncode == 1 and " failed" in last:
        return "RED", last  # a test ran and failed: the promise is guarded
    return ("SURVIVED" if proc.returncode == 0 else "ERROR"), last  # ERROR: collection or usage broke


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("filter", nargs="?", default="", help="only mutations whose name contains this")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args()
    # A SIGTERM (a killed session) must still restore the mutated file: make it an exception.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    chosen = [m for m in MUTATIONS if args.filter in m.name]
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.path}: {m.old.strip()!r} -> {m.new.strip()!r}")
        return 0
    bad = 0
    for m in chosen:
        t0 = time.perf_counter()
        verdict, last = run(m)
        bad += verdict != "RED"
        print(f"{verdict:<8} {m.name} ({m.path}; {time.perf_counter() - t0:.0f} s): {last}", flush=True)
    print(f"{len(chosen) - bad} of {len(chosen)} mutations caught")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
