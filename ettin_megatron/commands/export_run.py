"""Export every checkpoint of a run as a Hugging Face folder named as Ettin's revisions (step1000, ext500, ...).

  python tools/export_run.py --load RUN --output OUT [--phase-tag step|ext|decay] [--tokenizer T] [--dtype D]
      [--watch [--poll-seconds S] [--stop-after-iteration N] [--idle-timeout S]]

Each complete checkpoint RUN/iter_N becomes OUT/<tag>N, the export of ``convert_checkpoint.py
megatron-to-hf`` plus ettin_checkpoint.json (step, samples and tokens consumed, source directory). The
tag is the phase: step (pre-training, the default: a checkpoint does not record its phase), ext (context
extension) or decay; a phase started with --finetune counts its steps from 0, so give each phase its tag.
A folder already exported is skipped; one a killed export left half-written is redone.

--watch keeps polling RUN and exports each checkpoint as training saves it: a separate process that
only reads the run, on the CPU (it hides the GPUs from itself, so it takes no memory training needs).
It stops on SIGTERM once the export in flight is done (exit 0: how a watcher is told to stop; an export
without --watch cut short so exits 143), at --stop-after-iteration or after --idle-timeout; Ctrl-C stops
at once, discarding the folder in progress (exit 130).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

from ettin_megatron.cli import check_writable, command_parser, non_negative_int, positive_float, run_command
from ettin_megatron.errors import ConfigError, Interrupted

WATCH_ONLY = ("poll_seconds", "stop_after_iteration", "idle_timeout")


def parser() -> argparse.ArgumentParser:
    p = command_parser(__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--load", required=True, help="the run's checkpoint directory (its --save)")
    p.add_argument("--output", required=True, help="directory of the exported folders (created if needed)")
    p.add_argument("--phase-tag", default="step", help="folder name prefix: step, ext or decay (default: step)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer directory / tokenizer.json (default: the one each checkpoint names)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="dtype of model.safetensors (default: the checkpoint's)")
    watch = p.add_argument_group("watching a run that is training")
    watch.add_argument("--watch", action="store_true", help="keep exporting new checkpoints as they are saved")
    watch.add_argument("--poll-seconds", type=positive_float, default=None, help="how often to look (default: 30)")
    watch.add_argument("--stop-after-iteration", type=non_negative_int, default=None, metavar="N",
                       help="stop once the checkpoint of iteration N (or a later one) is exported")
    watch.add_argument("--idle-timeout", type=positive_float, default=None, metavar="S",
                       help="stop when no new checkpoint appeared for S seconds")
    return p


def check_run(load: Path, watch: bool) -> None:
    """--load must be a run's checkpoint directory, holding a complete checkpoint unless watched."""
    from ettin_megatron.checkpoint import CONFIG_FILE, saved_iterations

    if not load.is_dir():
        raise ConfigError(f"--load {load} is not a directory; pass a run's checkpoint directory (its --save).")
    if (load / CONFIG_FILE).is_file():
        raise ConfigError(f"--load {load} is one checkpoint, not a run; pass {load.parent}, or export it alone "
                          "with convert_checkpoint.py megatron-to-hf.")
    if not watch and not saved_iterations(load):
        raise ConfigError(f"--load {load} holds no complete checkpoint (iter_N with {CONFIG_FILE}); pass a run's "
                          "--save, or add --watch to wait for its first save.")


def check_output(output: Path) -> None:
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} is a file; pass a directory.")
    check_writable(output, "--output")


def run(args) -> int:
    from ettin_megatron.checkpoint import iteration_of
    from ettin_megatron.convert.export_run import RunCheckpoints, Watch, export_checkpoint, folder_name, is_exported

    given = [f"--{name.replace('_', '-')}" for name in WATCH_ONLY if getattr(args, name) is not None]
    if given and not args.watch:
        raise ConfigError(f"{', '.join(given)} only apply with --watch; add it or leave them out.")
    folder_name(args.phase_tag, 0)  # refuses an unknown tag now, not at the first checkpoint
    load, output = Path(args.load), Path(args.output)
    check_run(load, args.watch)
    check_output(output)

    watch = Watch(args.poll_seconds or Watch.poll_seconds, args.stop_after_iteration, args.idle_timeout) \
        if args.watch else None
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    checkpoints = RunCheckpoints(load, watch, stop)
    exported = skipped = 0
    try:
        for directory in checkpoints:
            folder = output / folder_name(args.phase_tag, iteration_of(directory))
            if is_exported(directory, folder):
                skipped += 1
                print(f"skipped {folder.name}: already exported", flush=True)
                continue
            start = time.monotonic()
            record = export_checkpoint(directory, folder, args.phase_tag, args.tokenizer, args.dtype)
            exported += 1
            tokens = "unknown" if record["consumed_tokens"] is None else f"{record['consumed_tokens']:,}"
            print(f"exported {folder.name}: iteration {record['iteration']}, {tokens} tokens, "
                  f"{time.monotonic() - start:.1f} s -> {folder}", flush=True)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted after {exported} exported; the folder in progress was discarded, "
                          "a rerun exports it.") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    counts = f"{exported} exported, {skipped} skipped"
    if stop.is_set():
        print(f"stopped on SIGTERM: {counts}; a rerun continues from there", flush=True)
        return 0 if args.watch else 128 + signal.SIGTERM
    print(f"done: {counts} ({checkpoints.ended_by}) in {output}", flush=True)
    return 0


@contextlib.contextmanager
def without_gpus():
    """The export runs on the CPU: beside training (--watch) it must take no GPU memory or time from it.
    The GPUs are hidden before torch first looks for one (a torch that already looked keeps what it found),
    and shown again after, for whatever else runs in this process or is started from it."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    try:
        yield
    finally:
        if visible is None:
            del os.environ["CUDA_VISIBLE_DEVICES"]
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = visible


def main(argv=None) -> int:
    with without_gpus():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"megatron\.")
        return run_command(lambda: run(parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
