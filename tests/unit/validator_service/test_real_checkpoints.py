"""Files written by PyTorch 2.13 and NumPy themselves, not built by hand: what users will upload.

They were made once (torch is not a dependency of Depot) with:

    m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2))
    torch.save(m.state_dict(), "state_dict.pt")
    torch.save(m.state_dict(), "legacy.pt", _use_new_zipfile_serialization=False)
    torch.save({"model": m.state_dict(), "epoch": 3, "lr": 0.1,
                "optimizer": torch.optim.Adam(m.parameters()).state_dict()}, "checkpoint.pt")
    torch.save({"w": torch.randn(3, dtype=torch.float16), "b": torch.zeros(2, dtype=torch.bfloat16),
                "i": torch.arange(5), "q": torch.ones(2, dtype=torch.bool)}, "dtypes.pt")
    torch.save(m, "full_module.pt")  # the module's classes are pickled: code that loading would import
    pickle.dump({"a": np.arange(5, dtype=np.float32), "b": np.float64(3.0)}, open("numpy.pkl", "wb"))
    safetensors.torch.save_file({"w": torch.randn(4, 3), "b": torch.zeros(3, dtype=torch.bfloat16),
                                 "i": torch.arange(6).reshape(2, 3)}, "model.safetensors", metadata={"format": "pt"})
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from validator_service.content import Rules
from validator_service.content.checks import run_checks

FILES = Path(__file__).parent / "torch_files"


def checks_of(name: str) -> dict[str, tuple[str, str]]:
    data = (FILES / name).read_bytes()
    with (FILES / name).open("rb") as f:
        results = run_checks(
            f, size=len(data), filename=name, package="model", version="1.0.0", declared_size=len(data),
            declared_sha256=hashlib.sha256(data).hexdigest(), rules=Rules(),
        )  # fmt: skip
    return {result.id: (result.status, result.detail) for result in results}


@pytest.mark.parametrize("name", ["state_dict.pt", "legacy.pt", "checkpoint.pt", "dtypes.pt", "numpy.pkl"])
def test_state_dicts_and_numpy_pickles_pass(name: str) -> None:
    checks = checks_of(name)
    assert checks["pickle"][0] == "pass", checks["pickle"]
    assert "all on the allow-list" in checks["pickle"][1]
    assert all(status != "fail" for status, _ in checks.values()), checks


@pytest.mark.parametrize("name", ["state_dict.pt", "checkpoint.pt", "dtypes.pt", "full_module.pt"])
def test_zip_checkpoints_are_archives_whose_pickle_is_scanned(name: str) -> None:
    checks = checks_of(name)
    assert checks["archive"][0] == "pass"
    assert "data.pkl" in checks["pickle"][1]


def test_a_whole_pickled_module_is_rejected_for_its_imports() -> None:
    status, detail = checks_of("full_module.pt")["pickle"]
    assert status == "fail"
    assert "torch.nn.modules.container.Sequential" in detail


def test_a_safetensors_file_from_the_library_passes() -> None:
    checks = checks_of("model.safetensors")
    assert checks["safetensors"][0] == "pass", checks["safetensors"]
    assert (checks["pickle"][0], checks["archive"][0]) == ("skip", "skip")
