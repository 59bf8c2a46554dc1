"""minitrain/dist.py in one process: the device, the contexts, the stop flag."""

import os
import signal

import pytest
import torch

from minitrain import UserError
from minitrain.training import dist


def test_single_process_contexts_and_helpers():
    with dist.process_group("cpu") as d:
        assert (d.rank, d.world_size, d.multi_process, d.is_main) == (0, 1, False, True)
        order = []
        with dist.main_first(d):
            order.append("body")
        t = torch.ones(3)
        assert dist.all_reduce_sum(t, d) is t and t.tolist() == [1, 1, 1]
        assert dist.broadcast_object({"a": 1}, d) == {"a": 1} and order == ["body"]


def test_cuda_without_a_gpu_is_one_sentence():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError, match="--device=cuda was asked for, but this machine has no usable CUDA GPU"):
        dist.pick_device("cuda")


def test_stop_flag_catches_sigterm_and_keeps_ignoring_signals_once_stopping():
    before = signal.getsignal(signal.SIGTERM)
    with dist.StopFlag() as stop:
        assert not stop.requested(dist.Dist())
    assert signal.getsignal(signal.SIGTERM) is before  # no stop asked: the old handler is back
    try:
        with dist.StopFlag() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.requested(dist.Dist()) and stop.was_requested
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal while the run winds down: noted, harmless
        assert signal.getsignal(signal.SIGTERM) is not before
    finally:
        signal.signal(signal.SIGTERM, before)
