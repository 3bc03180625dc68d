import contextlib
import io
import os
import sys

# The scripts are top-level modules (no package): make them importable from the tests.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import pytest  # noqa: E402
import torch  # noqa: E402

import checkpoint  # noqa: E402
import metrics  # noqa: E402
import utils  # noqa: E402

# The in-process tests run tiny tensors, for which OpenMP threads waiting on each other cost more
# than they save (several times slower on a busy 2-core machine); one thread changes no result.
# Scripts the tests start as subprocesses keep torch's default.
torch.set_num_threads(1)


def rarer_class(gan_path, classifier_path, n=200):
    """(the class a tiny generator draws least often on n seeded samples, how many): the undesired
    class of the pipeline tests; both classes must occur."""
    g, _ = checkpoint.load_generator(gan_path)
    classifier, meta = checkpoint.load_classifier(classifier_path)
    images = torch.cat([b for _, b in metrics.generate_images(g, n, 0, 100, "cpu")])
    counts = metrics.label_counts(metrics.classify(classifier, meta, utils.from_uint8(utils.to_uint8(images))), meta)
    assert counts.min() > 0, f"the tiny generator makes one class only: {counts.tolist()}"
    return meta["classes"][int(counts.argmin())], int(counts.min())


def run_main(script, *argv):
    """Run a script in-process as its command line would: main(create_argparser().parse_args(argv))."""
    return script.main(script.create_argparser().parse_args([str(a) for a in argv]))


def cli_error(script, *argv):
    """Run a script in-process through its CLI wrapper (utils.run_cli) and return the error line it
    ends with; the wrapper must exit with status 2 and print no traceback."""
    stderr = io.StringIO()
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stderr(stderr):
        utils.run_cli(script.main, script.create_argparser().parse_args([str(a) for a in argv]))
    text = stderr.getvalue()
    assert exit_info.value.code == 2 and "Traceback" not in text, text
    last = text.strip().splitlines()[-1]
    assert last.startswith("error: "), text
    return last
