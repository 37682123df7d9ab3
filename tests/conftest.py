import os

import pytest
import torch

from deltalora.backbones import load_backbone

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_qwen2():
    return load_backbone("tiny-qwen2")


@pytest.fixture(scope="session")
def tiny_llama():
    return load_backbone("tiny-llama")


@pytest.fixture
def deltalora_home(tmp_path, monkeypatch):
    """An isolated cache root, so tests never touch the user's ~/.cache/deltalora."""
    root = tmp_path / "home"
    monkeypatch.setenv("DELTALORA_HOME", str(root))
    return root
