"""The README's first run: `nas-cli train` with defaults on the embedded MNIST digits."""

from __future__ import annotations

import pytest
from helpers import cli, summary


@pytest.mark.slow
def test_default_train_reaches_97_percent_on_mnist5k(tmp_path):
    out = cli("train", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    (run,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    record = summary(run)
    assert record["status"] == "ok" and record["device"] == "cpu"
    assert record["final_val_acc"] >= 0.97
