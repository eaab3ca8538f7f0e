"""Thread defaults: the venv's activate script sets OMP_NUM_THREADS=1 (torchrun then prints no
banner) and DISTID_THREADS=auto, with which each process takes its share of the cores, once."""

import os

import torch

from distid import runtime


def test_each_process_takes_its_share_of_the_cores_once(monkeypatch):
    cores = len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    monkeypatch.setattr(runtime, "_shared", False)
    monkeypatch.setenv("DISTID_THREADS", "auto")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    try:
        runtime.share_cores()
        assert torch.get_num_threads() == max(1, cores // 4)
        monkeypatch.delenv("LOCAL_WORLD_SIZE")  # a split sweep's point poses as a lone process: no change
        runtime.share_cores()
        assert torch.get_num_threads() == max(1, cores // 4)
    finally:
        torch.set_num_threads(before)


def test_without_the_activate_default_threads_are_left_alone(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(runtime, "_shared", False)
    monkeypatch.delenv("DISTID_THREADS", raising=False)
    runtime.share_cores()
    assert torch.get_num_threads() == before


def test_setup_writes_the_default_into_activate():
    text = open(os.path.join(os.path.dirname(__file__), "..", "launch", "setup.sh")).read()
    assert 'export OMP_NUM_THREADS=1 DISTID_THREADS=auto' in text
