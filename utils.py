"""What every script needs and no other module is about: one-line user errors, the CLI
wrapper, seeding, the output folder, atomic file writes, and uint8 images.

Imports torch and numpy only, so that any script (the toy too) can use it.
"""

import argparse
import glob
import json
import math
import os
import random
import re
import signal
import sys
import tempfile
import threading

import numpy as np
import torch


# --------------------------------------------------------------------------------------------
# Errors and the command line
# --------------------------------------------------------------------------------------------


class UserError(Exception):
    """A problem with the user's input: printed as one line by `run_cli`, never as a traceback."""

    def __init__(self, message=""):
        # raised in a DataLoader worker, it is re-raised here wrapped in the worker's traceback
        if "Original Traceback" in str(message):
            message = str(message).strip().splitlines()[-1].split("UserError: ", 1)[-1]
        super().__init__(message)


def check_device(device):
    """Raise a UserError naming the fix when torch cannot use `device` (not deep inside torch)."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device}: not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"--device {device}: torch sees no CUDA GPU here; use --device cpu")
        if parsed.index is not None and parsed.index >= count:
            raise UserError(f"--device {device}: torch sees {count} CUDA GPU(s) (cuda:0 to cuda:{count - 1})")


def run_cli(main, args):
    """Call `main(args)` after checking `args.device` (when the script has one); a UserError
    ends the process with a one-line message and status 2, Ctrl-C with one line and status 130."""
    command = " ".join(["python"] + sys.argv + ["--resume"] * ("--resume" not in sys.argv))
    def interrupted():  # a trainer names its newest checkpoint: the one --resume continues
        out = str(getattr(args, "out", None) or "") if hasattr(args, "resume") else ""
        newest = max(glob.glob(os.path.join(glob.escape(out), "**", "*.pt"), recursive=True) if out else [],
                     key=lambda p: os.path.getmtime(p) if os.path.isfile(p) else 0, default=None)
        return "interrupted: the files written so far are whole" + (f"; newest checkpoint {newest}" if newest else
                                                                   "") + (f"; continue with: {command}" * bool(out))

    def on_sigint(signum, frame):
        if on_sigint.seen:  # the first KeyboardInterrupt was swallowed (e.g. raised inside a __del__)
            print(f"\n{interrupted()}", file=sys.stderr, flush=True)
            os._exit(130)
        on_sigint.seen = True
        raise KeyboardInterrupt
    on_sigint.seen = False
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if main_thread else None
    try:
        if getattr(args, "device", None) is not None:
            check_device(args.device)
        return main(args)
    except KeyboardInterrupt:
        print(f"\n{interrupted()}", file=sys.stderr)
        sys.exit(130)
    except (MemoryError, torch.OutOfMemoryError, RuntimeError) as err:
        if not isinstance(err, MemoryError) and "memory" not in str(err) and "alloc" not in str(err):
            raise
        print(f"error: out of memory ({str(err).strip().splitlines()[0][:120]}); lower the sizes and counts given "
              "(--batch, --n_sample, --n_eval, ...)", file=sys.stderr)
        sys.exit(2)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help keeps the docstring's layout and shows each flag's default (None: the help says it)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def default_device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state():
    """The random state a resumed run continues from: torch's CPU (and CUDA) generators and Python's."""
    state = random.getstate()
    record = {"torch": torch.get_rng_state(), "python": [state[0], list(state[1]), state[2]]}
    if torch.cuda.is_available():
        record["cuda"] = torch.cuda.get_rng_state_all()
    return record


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def prepare_out_dir(out):
    """Create `out`, failing now (not after an hour) if it is not writable; remove a killed run's temporary files."""
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out):
            pass
    except OSError as err:
        raise UserError(f"cannot write to --out {out}: {err.strerror}; choose another folder")
    for name in (os.path.join(d, f) for d, _, files in os.walk(out) for f in files if TEMPORARY.fullmatch(f)):
        os.remove(name)
    return out


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a bad command line reported in one line (not the usage block) and status 2."""
    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def make_parser(doc):
    """An ArgumentParser whose --help is the script's docstring followed by every flag."""
    return ArgumentParser(description=doc, formatter_class=HelpFormatter)


def _number(kind, low=None, above=None, high=None, what=""):
    """An argparse type: `kind` (int or float), finite, and >= low / > above / <= high."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or (low is not None and value < low) \
                or (above is not None and value <= above) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value
    parse.__name__ = what
    return parse


# numeric flag types: bad values fail at parse time, in one line naming the flag
positive_int = _number(int, low=1, what="a whole number of at least 1")
nonnegative_int = _number(int, low=0, what="a whole number of at least 0")
positive_float = _number(float, above=0, what="a finite number above 0")
nonnegative_float = _number(float, low=0, what="a finite number of at least 0")
finite_float = _number(float, what="a finite number")
probability = _number(float, low=0, high=1, what="a number from 0 to 1")


def add_out_args(parser, default, resume=True):
    """--out, --overwrite and (where the script can continue a run) --resume."""
    parser.add_argument("--out", default=default, help="output folder (refused if it holds a run: see --overwrite)")
    parser.add_argument("--overwrite", action="store_true",
                        help="remove the outputs of an earlier run of this script in --out, then start")
    if resume:
        parser.add_argument("--resume", action="store_true",
                            help="continue the run in --out from its last checkpoint (or start it if there is none)")


def claim_out_dir(args, outputs):
    """A folder holding this script's `outputs` (globs) is refused without --resume or --overwrite."""
    found = sorted(path for pattern in outputs for path in glob.glob(os.path.join(args.out, pattern)))
    if found and not (getattr(args, "resume", False) or args.overwrite):
        shown = ", ".join(os.path.relpath(path, args.out) for path in found[:3]) + (", ..." if len(found) > 3 else "")
        ways = "--resume to continue it, " if hasattr(args, "resume") else ""
        raise UserError(f"--out {args.out} already holds a run ({shown}): add {ways}--overwrite to replace it, "
                        "or choose another --out")
    if args.overwrite:
        for path in found:
            os.remove(path)
    return prepare_out_dir(args.out)


def write_args_json(out, args, name="args.json"):
    """Write the resolved options and the command line beside a stage's outputs."""
    record = {"args": vars(args), "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}
    text = json.dumps(record, indent=2, default=str)
    atomic_write(os.path.join(out, name), lambda f: f.write(text.encode()))


# --------------------------------------------------------------------------------------------
# Files and images
# --------------------------------------------------------------------------------------------


TEMPORARY = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")  # the names atomic_write gives its temporary files


def _file_mode():
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()  # outputs follow the umask (0644 by default), not mkstemp's 0600


def atomic_write(path, write):
    """Call `write(file)` on a temporary file beside `path`, then move it into place: readers
    (and a run killed mid-write) see the old file or the new one, never half of one. The
    temporary file is hidden (`.NAME.XXXXXXXX.tmp`), so it is never taken for an output."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def to_uint8(images):
    """Images in [-1, 1] -> uint8 [0, 255], rounded exactly as `save_image_grid` saves them."""
    return ((images.detach().float().clamp(-1, 1) + 1) / 2).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)


def from_uint8(images):
    """uint8 [0, 255] -> float images in [-1, 1] (the inverse of `to_uint8` on its values)."""
    return images.float() / 127.5 - 1
