"""Break one promise at a time and check that a test notices: a small, hand-written mutation table.

    python scripts/check_mutations.py            # every mutation (a few minutes on 2 cores)
    python scripts/check_mutations.py resume     # only those whose name contains "resume"
    python scripts/check_mutations.py --list

Each entry replaces one exact piece of code (it must occur once in its file), runs the tests that
guard it (slow ones included: the marker filter is cleared), restores the file and reports
- RED: a test failed on an assertion about the promise (good);
- CRASH: the first failure was the mutated code raising NameError, AttributeError, TypeError,
  ImportError, SyntaxError (...): the program broke, not the promise; rewrite the entry so that the code
  still runs and the promise is broken;
- SKIPPED: every selected test was skipped here (a browser, a GPU missing): no verdict on this machine;
- SURVIVED: the tests passed: a test to write;
- ERROR: the tests could not even run (collection, usage); BROKEN: they fail without the mutation too;
- MOVED: the code it names is not there (update the entry where the code went).
The exit status is 1 unless every one is RED or SKIPPED. Run it after a refactor to show the suite still
guards every promise listed here; add an entry with each test that guards a new promise. Why a test failed
is read from ``scripts/mutation_verdict.py``, a pytest plugin loaded into each run.

Run it in the checkout that the environment's editable install points to: tests that start
``python -m cnnbench`` from another folder import the installed copy, so in a second clone their
mutations look SURVIVED (seen: the sweep's summary.previous.json entry).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
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
             "    if cfg.trainer.checkpoint:\n        _save(run, CHECKPOINT)",
             "    if cfg.trainer.checkpoint and epoch % 2 == 0:\n        _save(run, CHECKPOINT)",
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
    Mutation("cpu: the command sets a passive OpenMP wait on a busy machine", "cnnbench/cli.py",
             "    choose_omp_wait()  #", "    pass  #",
             ("tests/test_threads.py",)),
    Mutation("cpu: a quiet machine bounds the spin", "cnnbench/threads.py",
             'os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT', "pass",
             ("tests/test_threads.py",)),
    Mutation("cpu: a quiet machine does not get the passive wait", "cnnbench/threads.py",
             "return running is not None and running - 1 >= usable_cores()", "return True",
             ("tests/test_threads.py",)),
    Mutation("cpu: the user's OMP_WAIT_POLICY wins", "cnnbench/threads.py",
             'user_set = "OMP_WAIT_POLICY" in os.environ or', "user_set =",
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
    Mutation("cpu: start-up: FLOPs as flop_counter counts them", "cnnbench/describe.py",
             "            total += conv_flop_count(list(inputs[0].shape), list(module.weight.shape), list(output.shape))",
             "            total += conv_flop_count(list(inputs[0].shape), list(module.weight.shape), list(inputs[0].shape))",
             ("tests/test_describe.py", "-k", "hook_count")),
    Mutation("cpu: start-up: unknown layers go to FlopCounterMode", "cnnbench/describe.py",
             "    if not all(isinstance(m, (nn.Conv2d, nn.Linear, *_UNCOUNTED)) for m in leaves):", "    if False:",
             ("tests/test_describe.py", "-k", "unknown_layers")),
    Mutation("cpu: start-up: deterministic kernels switched back off in one process", "cnnbench/build.py",
             "    if (torch.are_deterministic_algorithms_enabled() != deterministic", "    if (False",
             ("tests/test_train.py", "-k", "deterministic_kernels")),
    Mutation("cpu: start-up: each composition is a copy", "cnnbench/config.py",
             "    cfg = copy.deepcopy(_COMPOSED[key])", "    cfg = _COMPOSED[key]",
             ("tests/test_config.py", "-k", "composed_once")),
    Mutation("cpu: start-up: the composition cache keeps only the latest", "cnnbench/config.py",
             "        while len(_COMPOSED) > COMPOSED_KEPT:", "        while False:",
             ("tests/test_config.py", "-k", "composed_once")),
    Mutation("cpu: start-up: the CPU memory estimate draws no random numbers", "cnnbench/memory.py",
             "        with torch.random.fork_rng(devices=[]):", "        if True:",
             ("tests/test_integrity.py", "-k", "meta_device")),
    Mutation("cpu: exit: the garbage collector is frozen before shutdown", "cnnbench/cli.py",
             "    gc.freeze()\n    sys.exit(code)", "    sys.exit(code)",
             ("tests/test_cli.py", "-k", "console_script")),
    Mutation("cpu: start-up: a train command pauses the garbage collector", "cnnbench/cli.py",
             "        collector.pause()", "        pass",
             ("tests/test_cli.py", "-k", "pauses_the_collector")),
    Mutation("cpu: start-up: the first epoch resumes the garbage collector", "cnnbench/train.py",
             "    collector.resume()  # the command's start", "    pass  # the command's start",
             ("tests/test_cli.py", "-k", "resumes_a_paused_collector")),
    Mutation("cpu: start-up: the start's cyclic garbage is collected, not frozen", "cnnbench/collector.py",
             "    gc.collect()\n    gc.freeze()", "    gc.freeze()",
             ("tests/test_cli.py", "-k", "resume_collects")),
    Mutation("cpu: conv weight grads: the chosen layers are swapped", "cnnbench/cpu_kernels.py",
             "            m.__class__ = Conv2dNHWCWeightGrad", "            pass",
             ("tests/test_cpu_kernels.py", "-k", "swaps_exactly or equals_atens or trains_with")),
    Mutation("cpu: conv weight grads: autocast keeps ATen's convolution", "cnnbench/cpu_kernels.py",
             "                and not torch.is_autocast_enabled(x.device.type))", "                )",
             ("tests/test_cpu_kernels.py", "-k", "falls_back")),
    Mutation("cpu: conv weight grads: the input gradient is ATen's", "cnnbench/cpu_kernels.py",
             "            grad_x = _conv_backward(grad, x, weight, ctx.conv, ctx.has_bias, (True, False, False))[0]",
             "            grad_x = _conv_backward(grad, x, weight, ctx.conv, ctx.has_bias, (True, False, False))[0] * 1.0001",
             ("tests/test_cpu_kernels.py", "-k", "equals_atens")),
    Mutation("cpu: conv weight grads: timing draws no random numbers of the run", "cnnbench/cpu_kernels.py",
             "    x = torch.randn(x_shape, generator=gen)", "    x = torch.randn(x_shape)",
             ("tests/test_cpu_kernels.py", "-k", "leaves_the_run_untouched")),
    Mutation("cpu: conv weight grads: timing leaves BatchNorm's statistics", "cnnbench/cpu_kernels.py",
             "        model.eval()  # shapes only", "        pass  # shapes only",
             ("tests/test_cpu_kernels.py", "-k", "leaves_the_run_untouched")),
    Mutation("cpu: conv weight grads: layers too slow to time are skipped", "cnnbench/cpu_kernels.py",
             "    if _time_call(aten) > MAX_TUNED_CALL_S:", "    if False:",
             ("tests/test_cpu_kernels.py", "-k", "leaves_the_run_untouched")),
    Mutation("cpu: conv weight grads: the margin includes its bound", "cnnbench/cpu_kernels.py",
             "if ratio <= NHWC_MARGIN]", "if ratio < NHWC_MARGIN]",
             ("tests/test_cpu_kernels.py", "-k", "leaves_the_run_untouched")),
    Mutation("cpu: conv weight grads: the run swaps the timed-faster layers", "cnnbench/speed.py",
             "        settings.nhwc_weight_grads = set_nhwc_weight_grads(model, faster_in_nhwc(settings.conv_weight_grad_ratios))",
             "        settings.nhwc_weight_grads = []",
             ("tests/test_cpu_kernels.py", "-k", "trains_with")),
    Mutation("cpu: conv weight grads: deterministic runs time nothing", "cnnbench/speed.py",
             'return (str(cfg.get("conv_weight_grad", "auto")) == "auto" and device.type == "cpu" and not deterministic',
             'return (str(cfg.get("conv_weight_grad", "auto")) == "auto" and device.type == "cpu"',
             ("tests/test_cpu_kernels.py", "-k", "trains_with")),
    Mutation("cpu: conv weight grads: an unknown setting is refused", "cnnbench/validate.py",
             '    if str(cfg.device.get("conv_weight_grad", "auto")) not in CONV_WEIGHT_GRAD_CHOICES:',
             "    if False:",
             ("tests/test_cpu_kernels.py", "-k", "unknown_conv_weight_grad")),
    Mutation("cpu: conv weight grads: every rank takes rank 0's layers", "cnnbench/build.py",
             "    set_nhwc_weight_grads(raw_model, speed.nhwc_weight_grads)  # rank 0's", "    pass  # rank 0's",
             ("tests/test_speed.py", "-k", "rank_0s")),
    Mutation("cpu: autotune: only the first round warms up", "cnnbench/speed.py",
             "warmup=r == 0))", "warmup=True))",
             ("tests/test_speed.py", "-k", "rounds_take_turns")),
    Mutation("cpu: autotune: the median round counts", "cnnbench/speed.py",
             "    timings = {name: x.shape[0] / statistics.median(s)", "    timings = {name: x.shape[0] / min(s)",
             ("tests/test_speed.py", "-k", "rounds_take_turns")),
    Mutation("cpu: autotune: a candidate far behind is timed no more", "cnnbench/speed.py",
             "<= DROP_BEHIND * fastest]", "<= 1e9 * fastest]",
             ("tests/test_speed.py", "-k", "far_behind")),
    Mutation("cpu: autotune: the timing stops with one candidate left", "cnnbench/speed.py",
             "        if len(running) == 1:\n            break", "        if False:\n            break",
             ("tests/test_speed.py", "-k", "far_behind")),
    Mutation("cpu: autotune: small networks are timed closely", "cnnbench/speed.py",
             "        closely = dict(steps=2, rounds=5, batch=None) if _small(flops_per_image) else {}",
             "        closely = {}",
             ("tests/test_speed.py", "-k", "small_networks")),
    # ---- fused CPU kernels (issue 17, round three): names start with "fused:"
    Mutation("fused: the batch variance subtracts the squared mean", "cnnbench/csrc/fused_cpu.c",
             "    double var = sumsq / M - mu * mu;", "    double var = sumsq / M;",
             ("tests/test_fused_cpu.py", "-k", "training_step_matches")),
    Mutation("fused: the running variance is unbiased", "cnnbench/csrc/fused_cpu.c",
             "momentum * var * M / (M > 1.0 ? M - 1.0 : 1.0)", "momentum * var",
             ("tests/test_fused_cpu.py", "-k", "training_step_matches")),
    Mutation("fused: BatchNorm's backward removes the xhat component", "cnnbench/csrc/fused_cpu.c",
             "dp[k] = k1 * (dy - mdy - (zp[k] - m) * is * mdyx);", "dp[k] = k1 * (dy - mdy);",
             ("tests/test_fused_cpu.py", "-k", "training_step_matches")),
    Mutation("fused: the pool's backward spreads quarters", "cnnbench/csrc/fused_cpu.c",
             "const float v = 0.25f * g[i * W2 + j];", "const float v = g[i * W2 + j];",
             ("tests/test_fused_cpu.py", "-k", "training_step_matches")),
    Mutation("fused: sigmoid + pool backward has the sigmoid's derivative", "cnnbench/csrc/fused_cpu.c",
             "        dp[k] = gq[k] * s * (1.0f - s);", "        dp[k] = gq[k] * s;",
             ("tests/test_fused_cpu.py", "-k", "training_step_matches and None")),
    Mutation("fused: LeNet's weights take the same update as with ATen's layers", "cnnbench/csrc/fused_cpu.c",
             "        dp[k] = gq[k] * s * (1.0f - s);", "        dp[k] = gq[k] * s;",
             ("tests/test_fused_cpu.py", "-k", "lenets")),
    Mutation("fused: exp's polynomial", "cnnbench/csrc/fused_cpu.c",
             "  y = y * x + 5.0000001201e-1f;", "  y = y * x + 0.4999f;",
             ("tests/test_fused_cpu.py", "-k", "training_step_matches")),
    Mutation("fused: the forward pools 2x2 blocks", "cnnbench/csrc/fused_cpu.c",
             "0.25f * ((r0[2 * j] + r0[2 * j + 1]) + (r1[2 * j] + r1[2 * j + 1]))",
             "0.25f * ((r0[2 * j] + r0[2 * j + 1]) + (r1[2 * j] + r1[2 * j]))",
             ("tests/test_fused_cpu.py", "-k", "training_step_matches")),
    Mutation("fused: num_batches_tracked counts the steps", "cnnbench/fused_cpu.py",
             "                self.num_batches_tracked.add_(1)", "                pass",
             ("tests/test_fused_cpu.py", "-k", "training_step_matches")),
    Mutation("fused: evaluation normalizes with the running variance", "cnnbench/fused_cpu.py",
             "scale = torch.rsqrt(self.running_var + self.eps)", "scale = torch.rsqrt(self.running_var + 1.0)",
             ("tests/test_fused_cpu.py", "-k", "evaluation")),
    Mutation("fused: odd sides go through ATen's layers", "cnnbench/fused_cpu.py",
             "and x.shape[-2] % 2 == 0 and x.shape[-1] % 2 == 0", "and x.shape[-1] % 2 == 0",
             ("tests/test_fused_cpu.py", "-k", "does_not_take")),
    Mutation("fused: the fallback keeps the absorbed pool's own class", "cnnbench/fused_cpu.py",
             "return pool(x) if pool is not None else F.avg_pool2d(x, 2, 2)", "return F.avg_pool2d(x, 2, 2)",
             ("tests/test_fused_cpu.py", "-k", "does_not_take")),
    Mutation("fused: only plain Sequentials are swapped", "cnnbench/fused_cpu.py",
             " or type(parent).forward is not nn.Sequential.forward:", ":",
             ("tests/test_fused_cpu.py", "-k", "only_the_patterns")),
    Mutation("fused: built once, then loaded from the cache", "cnnbench/fused_cpu.py",
             "        if not path.exists():", "        if True:",
             ("tests/test_fused_cpu.py", "-k", "built_once")),
    Mutation("fused: a failed build leaves no file", "cnnbench/fused_cpu.py",
             "        if os.path.exists(tmp):\n            os.unlink(tmp)", "        pass",
             ("tests/test_fused_cpu.py", "-k", "working_compiler")),
    Mutation("fused: no compiler, no swap", "cnnbench/fused_cpu.py",
             "    if compiler is None:", "    if False:",
             ("tests/test_fused_cpu.py", "-k", "working_compiler")),
    Mutation("fused: off where two OpenMP runtimes would run", "cnnbench/fused_cpu.py",
             "    if len(runtimes := openmp_runtimes()) != 1:", "    if False:",
             ("tests/test_fused_cpu.py", "-k", "shares_torchs_openmp")),
    Mutation("fused: only with torch on GNU OpenMP", "cnnbench/fused_cpu.py",
             'return bool(runtimes) and all("libgomp" in Path(f).name for f in runtimes)', "return True",
             ("tests/test_fused_cpu.py", "-k", "another_openmp")),
    Mutation("fused: a CPU run swaps them in", "cnnbench/speed.py",
             "        settings.fused_kernels = use_fused_kernels(model)", "        settings.fused_kernels = []",
             ("tests/test_fused_cpu.py", "-k", "switch_turns")),
    Mutation("fused: device.fused_kernels=false turns them off", "cnnbench/speed.py",
             'cfg.get("fused_kernels", True) and not settings.compile', "not settings.compile",
             ("tests/test_fused_cpu.py", "-k", "switch_turns")),
    Mutation("the confusion picture colours cells by share", "cnnbench/figures.py",
             "            draw.rectangle(box, fill=_blue(shares[i, j]))", "            draw.rectangle(box, fill=_blue(0.5))",
             ("tests/test_evaluation.py", "-k", "colours_each_cell")),
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
    # ---- model selection on validation data
    Mutation("the validation images are held out of training", "cnnbench/build.py",
             "        train_split, val_split = split_train_val(train_split,", "        _, val_split = split_train_val(train_split,",
             ("tests/test_selection.py", "-k", "no_validation_image")),
    Mutation("the split is stratified by class", "cnnbench/data/split.py",
             "    quotas = class_quotas(counts, val_size)",
             "    quotas = torch.full_like(counts, val_size // num_classes)",
             ("tests/test_selection.py", "-k", "stratified")),
    Mutation("the split has its own seed", "cnnbench/data/split.py",
             "    gen = torch.Generator().manual_seed(int(seed))", "    gen = None",
             ("tests/test_selection.py", "-k", "stratified or across_training_seeds")),
    Mutation("best.pt when the monitor improves", "cnnbench/train.py",
             "            _save(run, BEST_CHECKPOINT)", "            pass",
             ("tests/test_selection.py", "-k", "best_pt_holds")),
    Mutation("resume keeps the selection state", "cnnbench/checkpoint.py",
             "        known = {f.name for f in fields(cls)}",
             '        known = {f.name for f in fields(cls)} - {"best_value", "evals_since_best"}',
             ("tests/test_selection.py", "-k", "resume_keeps")),
    Mutation("early stopping", "cnnbench/selection.py",
             "        if self.patience is not None and state.evals_since_best >= self.patience:",
             "        if False:",
             ("tests/test_selection.py", "-k", "early_stopping")),
    Mutation("Optuna maximizes validation accuracy", "cnnbench/launch.py",
             '    value = summary.get("best/val_acc")', "    value = None",
             ("tests/test_sweeps.py", "-k", "objective_is_the_selected or maximizes_validation")),
    Mutation("an optimizing sweep needs a validation split", "cnnbench/launch.py",
             "            _check_optimizing_sweep(cfg)", "            pass",
             ("tests/test_sweeps.py", "-k", "without_a_validation_split")),
    Mutation("the report ranks by validation accuracy", "cnnbench/report/runs.py",
             "        acc = r.val_acc if by_val else r.test_acc", "        acc = r.test_acc",
             ("tests/test_report.py", "-k", "ranked_and_selected")),
    Mutation("the book comparison checks the train loss", "cnnbench/book_results.py",
             '"ok": low - tol <= value <= high + tol}', '"ok": True}',
             ("tests/test_selection.py", "-k", "book_recipe")),
    # ---- beyond the book: augmentation and training options
    Mutation("augmentation flips", "cnnbench/data/augment.py",
             "        if self.flip > 0:", "        if False:",
             ("tests/test_augment.py", "-k", "pixel_exactly")),
    Mutation("random crops move the image", "cnnbench/data/augment.py",
             "    rows = (offsets[:, 0, None] + span)", "    rows = (0 * offsets[:, 0, None] + span)",
             ("tests/test_augment.py", "-k", "pixel_exactly")),
    Mutation("augmentation draws depend on the batch", "cnnbench/data/augment.py",
             " + batch + SALT)", " + SALT)",
             ("tests/test_augment.py", "-k", "fixed_by_seed")),
    Mutation("each rank takes its share of the draws", "cnnbench/data/loader.py",
             ".tensor_split(self.world_size)[self.rank]]", ".tensor_split(self.world_size)[0]]",
             ("tests/test_augment.py", "-k", "alone_or_in_its_epoch")),
    Mutation("the EMA is updated every step", "cnnbench/train.py",
             "            after_step=(lambda: run.ema.update_parameters(run.raw_model)) if run.ema is not None else None,",
             "            after_step=None,",
             ("tests/test_augment.py", "-k", "hand_computed_average")),
    Mutation("the EMA is checkpointed", "cnnbench/checkpoint.py",
             '        "ema": run.ema.state_dict() if run.ema is not None else None,', '        "ema": None,',
             ("tests/test_augment.py", "-k", "resume_with_augmentation")),
    Mutation("the EMA is what is evaluated", "cnnbench/train.py",
             "    metrics = _evaluate_model(run, run.ema if run.ema is not None else run.model, prefix=\"\")",
             "    metrics = _evaluate_model(run, run.model, prefix=\"\")",
             ("tests/test_augment.py", "-k", "what_is_evaluated")),
    Mutation("label smoothing", "cnnbench/engine.py",
             "    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)", "    loss_fn = nn.CrossEntropyLoss()",
             ("tests/test_augment.py", "-k", "label_smoothing")),
    Mutation("flip TTA", "cnnbench/engine.py",
             "                logits = (logits + model(x.flip(-1))) / 2", "                logits = logits",
             ("tests/test_augment.py", "-k", "tta")),
    Mutation("target accuracy stops the run", "cnnbench/train.py",
             "    if value is not None and value >= float(target):", "    if False:",
             ("tests/test_augment.py", "-k", "target_accuracy")),
    Mutation("one-cycle anneals with a cosine", "cnnbench/optim.py",
             "    return end + (begin - end) / 2.0 * (math.cos(math.pi * pct) + 1)",
             "    return end + (begin - end) * (1 - pct)",
             ("tests/test_augment.py", "-k", "onecycle")),
    # ---- checks before launch
    Mutation("optimizer and schedule names are checked before launch", "cnnbench/validate.py",
             "    _check_names(cfg)\n", "    pass\n",
             ("tests/test_optim.py", "-k", "refused_before")),
    Mutation("an output folder that cannot be made is refused", "cnnbench/validate.py",
             'tempfile.mkdtemp(prefix=".cnnbench-write-check-", dir=existing)',
             'tempfile.mkdtemp(prefix=".cnnbench-write-check-")',
             ("tests/test_reliability.py", "-k", "virtual_file_system")),
    # ---- run-folder integrity (issue 16)
    Mutation("a second writer of a run folder is refused", "cnnbench/runlock.py",
             "        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)", "        pass",
             ("tests/test_integrity.py", "-k", "reentrant or second_process")),
    Mutation("cnnbench train locks the folder before Hydra writes", "cnnbench/launch.py",
             '            _claim_run_folder(Path(_given(args, "hydra.run.dir") or out_dir), args, held)', "            pass",
             ("tests/test_integrity.py", "-k", "second_process")),
    Mutation("the lock is re-entrant in one process", "cnnbench/runlock.py",
             "    if key in _HELD:\n        _HELD[key][1] += 1", "    if False:\n        _HELD[key][1] += 1",
             ("tests/test_integrity.py", "-k", "reentrant")),
    Mutation("a killed holder leaves no stale lock", "cnnbench/runlock.py",
             "os.O_RDWR | os.O_CREAT | os.O_CLOEXEC", "os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC",
             ("tests/test_integrity.py", "-k", "killed_holder")),
    Mutation("only rank 0 holds the run folder's lock", "cnnbench/train.py",
             "    with run_folder_lock(run_dir, enabled=ctx.is_main):", "    with run_folder_lock(run_dir, enabled=True):",
             ("tests/test_distributed.py", "-k", "two_processes")),
    Mutation("a sweep job folder in use is reported, the sweep goes on", "cnnbench/launch.py",
             "        except (RunFolderInUse, ResumeRefused) as exc:", "        except () as exc:",
             ("tests/test_integrity.py", "-k", "sweep_reports")),
    Mutation("Hydra does not write .hydra/ outside the lock", "cnnbench/launch.py",
             '        extra.append("hydra.output_subdir=null")', "        pass",
             ("tests/test_integrity.py", "-k", "sweep_reports or first_starts_hydra")),
    Mutation("a resume that changes what epochs mean is refused", "cnnbench/resume_check.py",
             "    if meaning and not forced:", "    if False:",
             ("tests/test_integrity.py", "-k", "refuses_a_change")),
    Mutation("optimizer settings are meaning keys", "cnnbench/resume_check.py",
             '    "optimizer", "scheduler",\n', "",
             ("tests/test_integrity.py", "-k", "refuses_a_change")),
    Mutation("the CLI refuses an incompatible resume before Hydra", "cnnbench/launch.py",
             "    check_resume(cfg, resolve_resume(cfg, run_dir), announce=False)", "    pass",
             ("tests/test_integrity.py", "-k", "first_starts_hydra")),
    Mutation("a forced resume uses the new optimizer settings", "cnnbench/resume_check.py",
             "    _keep_fresh_settings(run, fresh, hyperparameters=forced_optimizer)",
             "    _keep_fresh_settings(run, fresh, hyperparameters=False)",
             ("tests/test_integrity.py", "-k", "forced_resume")),
    Mutation("every resume is recorded in the summary", "cnnbench/resume_check.py",
             "        run.state.resumes.append(plan.record(overrides, run.state.step, record_dir))", "        pass",
             ("tests/test_integrity.py", "-k", "forced_resume or allows_epochs")),
    Mutation("the first start's .hydra/ is kept", "cnnbench/resume_check.py",
             "    first = not (run_dir / CONFIG).exists()", "    first = True",
             ("tests/test_integrity.py", "-k", "first_starts_hydra")),
    Mutation("failed writes are named with their OS error", "cnnbench/diskspace.py",
             "        raise RunFileWriteError(path, os_error) from exc", "        raise",
             ("tests/test_integrity.py", "-k", "full_disk_names and last.pt")),
    Mutation("a failed metrics.jsonl write is named", "cnnbench/runlog.py",
             "        with writing(self.run_dir / METRICS):\n            self._jsonl.write(",
             "        if True:\n            self._jsonl.write(",
             ("tests/test_integrity.py", "-k", "full_disk_names and metrics")),
    Mutation("a failed TensorBoard write is named", "cnnbench/runlog.py",
             "        with writing(self._events_file()):\n            for key", "        if True:\n            for key",
             ("tests/test_integrity.py", "-k", "full_disk_names and events")),
    Mutation("a failed final summary.json write ends as failed", "cnnbench/train.py",
             "        if not isinstance(error, RunFileWriteError):\n            summary.update(",
             "        if False:\n            summary.update(",
             ("tests/test_integrity.py", "-k", "full_disk_names and summary")),
    Mutation("a run stopped by a failed write prints its resume command", "cnnbench/run_summary.py",
             '    if summary.get("resume_command"):', "    if False:",
             ("tests/test_integrity.py", "-k", "full_disk_names and last.pt")),
    Mutation("low free space is warned about", "cnnbench/diskspace.py",
             "    if free >= LOW_SPACE_CHECKPOINTS * checkpoint_bytes:", "    if True:",
             ("tests/test_integrity.py", "-k", "low_free_space")),
    Mutation("a step that cannot fit is refused before training", "cnnbench/memory.py",
             "    if need.total(batch) <= REFUSE_ABOVE * available:", "    if True:",
             ("tests/test_integrity.py", "-k", "cannot_fit")),
    Mutation("the suggested batch leaves room for the fixed part", "cnnbench/memory.py",
             "        room = available * FIT_MARGIN - self.fixed", "        room = available * FIT_MARGIN",
             ("tests/test_integrity.py", "-k", "cannot_fit")),
    Mutation("out of memory during training is one line with a batch that fits", "cnnbench/train.py",
             '            status, error = "failed", _user_error(exc, cfg, run) or exc', '            status, error = "failed", exc',
             ("tests/test_integrity.py", "-k", "out_of_memory_during")),
    Mutation("float options must be finite", "cnnbench/validate.py",
             "    check_finite(cfg)\n", "    pass\n",
             ("tests/test_reliability.py", "-k", "bad_config and nan")),
    Mutation("momentum, betas and other ranges are checked", "cnnbench/validate.py",
             "    check_ranges(cfg)\n", "    pass\n",
             ("tests/test_reliability.py", "-k", "bad_config and momentum")),
    Mutation("model keyword arguments are checked by the family", "cnnbench/validate.py",
             "    check_model_kwargs(spec.name, _model_kwargs(cfg))\n", "    pass\n",
             ("tests/test_reliability.py", "-k", "bad_config and width_div")),
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
    # ---- after training: per-class results, eval, predict, export, TensorBoard's first screen
    Mutation("the final evaluation counts a confusion matrix", "cnnbench/train.py",
             "num_classes=int(run.cfg.dataset.num_classes) if counted else None)", "num_classes=None)",
             ("tests/test_evaluation.py", "-k", "per_class_accuracy_and_a_confusion_image")),
    Mutation("confusion rows are true classes, columns predictions", "cnnbench/confusion.py",
             "torch.bincount(labels * num_classes + preds,", "torch.bincount(preds * num_classes + labels,",
             ("tests/test_evaluation.py", "-k", "hand_count or sums_to_the_test_set")),
    Mutation("the confusion matrix is summed over ranks", "cnnbench/engine.py",
             "        confusion = all_sum(confusion, dist_ctx).cpu()", "        confusion = confusion.cpu()",
             ("tests/test_distributed.py", "-k", "two_processes")),
    Mutation("the confusion image goes to TensorBoard", "cnnbench/train.py",
             "            rlog.log_confusion(TB_CONFUSION,", "            (lambda *a: None)(TB_CONFUSION,",
             ("tests/test_evaluation.py", "-k", "per_class_accuracy_and_a_confusion_image")),
    Mutation("eval loads the checkpoint's weights", "cnnbench/inference.py",
             "        model.load_state_dict(reported_weights(state))", "        pass",
             ("tests/test_evaluation.py", "-k", "reproduces")),
    Mutation("eval prepares images as the run did", "cnnbench/inference.py",
             "normalize=self.contract.normalize, channels_last=", "normalize=(0.5, 0.5), channels_last=",
             ("tests/test_evaluation.py", "-k", "reproduces")),
    Mutation("eval refuses a checkpoint of another network", "cnnbench/inference.py",
             "    if saved != cfg.model.name:", "    if False:",
             ("tests/test_evaluation.py", "-k", "error_paths")),
    Mutation("eval of a sweep goes on after a broken job", "cnnbench/evaluation.py",
             "            if len(runs) == 1:\n                raise", "            raise",
             ("tests/test_evaluation.py", "-k", "sweep_folder")),
    Mutation("the validation split is held out of training", "cnnbench/data/split.py",
             "    return Split(split.images[~held], labels[~held]), Split(split.images[held], labels[held])",
             "    return Split(split.images, labels), Split(split.images[held], labels[held])",
             ("tests/test_evaluation.py", "-k", "validation_split_is")),
    Mutation("the validation split is stratified", "cnnbench/data/split.py",
             "        members = torch.nonzero(labels == c).flatten()", "        members = torch.arange(len(labels))",
             ("tests/test_evaluation.py", "-k", "validation")),
    Mutation("a relative data root is read from the run's start folder", "cnnbench/inference.py",
             "    cfg.dataset.root = str(Path(str(cwd)) / str(root))", "    pass",
             ("tests/test_evaluation.py", "-k", "relative_data_root")),
    Mutation("predict inverts dark-on-light pictures", "cnnbench/predict.py",
             "    inverted = background > 127.5", "    inverted = False",
             ("tests/test_predict.py", "-k", "networks_class or inverts")),
    Mutation("predict keeps the aspect ratio", "cnnbench/predict.py",
             "    size = (max(1, round(w * scale)), max(1, round(h * scale)))", "    size = (NATIVE_SIDE, NATIVE_SIDE)",
             ("tests/test_predict.py", "-k", "aspect_ratio")),
    Mutation("predict goes on after an unreadable file", "cnnbench/predict.py",
             "    except (OSError, ValueError, SyntaxError) as exc:", "    except () as exc:",
             ("tests/test_predict.py", "-k", "unreadable")),
    Mutation("export fails above the tolerance", "cnnbench/export.py",
             "    if not diff <= TOLERANCE:", "    if False:",
             ("tests/test_export.py", "-k", "does_not_reproduce")),
    Mutation("the ONNX batch dimension is dynamic", "cnnbench/export.py",
             "dynamic_shapes=({0: batch},)", "dynamic_shapes=None",
             ("tests/test_export.py", "-k", "lenet-onnx")),
    Mutation("the ONNX file carries its input contract", "cnnbench/export.py",
             "    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)", "    entry.key, entry.value = 'x', ''",
             ("tests/test_export.py", "-k", "input_contract")),
    Mutation("HParams has one name per setting", "cnnbench/runlog.py",
             "HPARAM_ALIASES.get(key, key) in hp:", "key in hp:",
             ("tests/test_dashboard.py", "-k", "one_name")),
    Mutation("Time Series opens on the curves", "cnnbench/runlog.py",
             "    return TB_TAGS.get(key, key)", "    return key",
             ("tests/test_dashboard.py", "-k", "open_on_the_curves or real_browser")),
    Mutation("Time Series opens on the curves in a real browser", "cnnbench/runlog.py",
             "    return TB_TAGS.get(key, key)", "    return key",
             ("tests/test_dashboard.py", "-k", "real_browser")),
    Mutation("the book's chart as a custom-scalars layout", "cnnbench/runlog.py",
             "            self._tb.add_custom_scalars(BOOK_LAYOUT)", "            pass",
             ("tests/test_dashboard.py", "-k", "open_on_the_curves")),
    Mutation("HParams metrics are the curves' own tags", "cnnbench/runlog.py",
             "dict.fromkeys(HPARAM_METRICS, 0.0)", 'dict.fromkeys(["hparam/test_acc"], 0.0)',
             ("tests/test_dashboard.py", "-k", "open_on_the_curves")),
    # ---- issue 23: promises a broken implementation used to pass
    Mutation("lenet's MLP keeps the book's sigmoids", "cnnbench/models/lenet.py",
             "            nn.Linear(120, 84),\n            *_norm(batch_norm, 84, 2),\n            nn.Sigmoid(),",
             "            nn.Linear(120, 84),\n            *_norm(batch_norm, 84, 2),\n            nn.ReLU(),",
             ("tests/test_models.py", "-k", "books_layers")),
    Mutation("a tie with the best does not reset early stopping", "cnnbench/selection.py",
             "        state.evals_since_best = 0 if gain > self.min_delta else",
             "        state.evals_since_best = 0 if gain >= self.min_delta else",
             ("tests/test_selection.py", "-k", "only_ties")),
    Mutation("a tie with the best does not move best.pt", "cnnbench/selection.py",
             "        improved = gain > 0", "        improved = gain >= 0",
             ("tests/test_selection.py", "-k", "only_ties")),
    Mutation("a monitored loss is minimized", "cnnbench/selection.py",
             '        return self.name.endswith("/acc")', "        return True",
             ("tests/test_selection.py", "-k", "loss_is_minimized")),
    Mutation("the target accuracy is judged on the monitored metric", "cnnbench/train.py",
             '    metric = run.monitor.name if run.monitor is not None and run.monitor.higher_is_better else "test/acc"',
             '    metric = "test/acc"',
             ("tests/test_selection.py", "-k", "monitored_validation")),
    Mutation("eval uses the EMA weights a run reported", "cnnbench/inference.py",
             "        model.load_state_dict(reported_weights(state))", '        model.load_state_dict(state["model"])',
             ("tests/test_evaluation.py", "-k", "ema_weights_not_the_raw")),
    Mutation("predict uses the EMA weights a run reported", "cnnbench/inference.py",
             "        model.load_state_dict(reported_weights(state))", '        model.load_state_dict(state["model"])',
             ("tests/test_predict.py", "-k", "ema_weights")),
    Mutation("export ships the EMA weights a run reported", "cnnbench/inference.py",
             "        model.load_state_dict(reported_weights(state))", '        model.load_state_dict(state["model"])',
             ("tests/test_export.py", "-k", "ema_weights")),
    Mutation("evaluation batches are never augmented", "cnnbench/build.py",
             "    return train_loader, val_loader, DeviceLoader(test_split, eval_bs, shuffle=False, **common)",
             "    return train_loader, val_loader, DeviceLoader(test_split, eval_bs, shuffle=False, "
             "augment=train_loader.augment, **common)",
             ("tests/test_augment.py", "-k", "never_augmented")),
    Mutation("validation batches are never augmented", "cnnbench/build.py",
             "DeviceLoader(val_split, eval_bs, shuffle=False, **common)",
             "DeviceLoader(val_split, eval_bs, shuffle=False, augment=train_loader.augment, **common)",
             ("tests/test_augment.py", "-k", "never_augmented")),
    Mutation("the EMA's weights are the reported test accuracy", "cnnbench/train.py",
             '    metrics = _evaluate_model(run, run.ema if run.ema is not None else run.model, prefix="")',
             '    metrics = _evaluate_model(run, run.model, prefix="")',
             ("tests/test_augment.py", "-k", "what_is_evaluated")),
)


def pytest(tests: tuple[str, ...]) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """Run the selected tests (marker filter cleared, stop at the first failure); the process and the
    plugin's record of each test."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.jsonl"
        env = {**os.environ, "CNNBENCH_MUTATION_REPORT": str(report),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "scripts"), os.environ.get("PYTHONPATH")]))}
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                               "-p", "mutation_verdict", "-m", "", *tests],
                              cwd=REPO, capture_output=True, text=True, timeout=1800, env=env)
        records = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    return proc, records


def verdict(proc: subprocess.CompletedProcess, records: list[dict]) -> str:
    """RED, CRASH, SKIPPED, SURVIVED, NO TESTS or ERROR for one run of the tests on mutated code."""
    if proc.returncode == 5:
        return "NO TESTS"
    failures = [r for r in records if r["outcome"] == "failed"]
    if proc.returncode == 1 and failures:
        return "CRASH" if failures[0]["crash"] else "RED"
    if proc.returncode == 0:
        ran = [r for r in records if r["when"] == "call" or r["outcome"] == "skipped"]
        return "SKIPPED" if ran and all(r["outcome"] == "skipped" for r in ran) else "SURVIVED"
    return "ERROR"  # collection or usage broke


def run(m: Mutation, baseline: dict[tuple[str, ...], bool]) -> tuple[str, str]:
    """Apply ``m``, run its tests, restore the file; (verdict, pytest's last line or the crash). The tests
    must pass on the unchanged code first (checked once per selection), or a red run would prove nothing."""
    path = REPO / m.path
    original = path.read_text()
    if original.count(m.old) != 1:
        return "MOVED", f"{m.old.strip()[:60]!r} occurs {original.count(m.old)} times in {m.path}"
    if m.tests not in baseline:
        baseline[m.tests] = pytest(m.tests)[0].returncode in (0, 5)
    if not baseline[m.tests]:
        return "BROKEN", "the tests fail on the unchanged code"
    path.write_text(original.replace(m.old, m.new))
    try:
        proc, records = pytest(m.tests)
    finally:
        path.write_text(original)
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    result = verdict(proc, records)
    if result == "CRASH":
        first = next(r for r in records if r["outcome"] == "failed")
        last = f"{first['crash']} in {first['test']}; {last}"
    return result, last


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
    counts: dict[str, int] = {}
    baseline: dict[tuple[str, ...], bool] = {}
    for m in chosen:
        t0 = time.perf_counter()
        result, last = run(m, baseline)
        counts[result] = counts.get(result, 0) + 1
        print(f"{result:<8} {m.name} ({m.path}; {time.perf_counter() - t0:.0f} s): {last}", flush=True)
    print(f"{counts.get('RED', 0)} of {len(chosen)} mutations caught: "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0 if set(counts) <= {"RED", "SKIPPED"} else 1


if __name__ == "__main__":
    sys.exit(main())
