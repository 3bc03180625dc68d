import os
import sys

# The scripts are top-level modules (no package): make them importable from the tests.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

# The in-process tests run tiny tensors, for which OpenMP threads waiting on each other cost more
# than they save (several times slower on a busy 2-core machine); one thread changes no result.
# Scripts the tests start as subprocesses keep torch's default.
torch.set_num_threads(1)
