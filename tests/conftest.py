"""Test-wide settings: one intra-op thread (the test models are tiny, and with two threads on a busy 2-core
machine small operations can wait milliseconds for a descheduled OpenMP thread)."""

import torch

torch.set_num_threads(1)
