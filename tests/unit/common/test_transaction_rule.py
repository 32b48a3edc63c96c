"""The rule of `common.db`: a request's transaction commits at its end, and a flow that must make
something durable earlier says so through `checkpoint`. Nothing else in the code commits."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
CODE = ["common", "auth_service", "package_service", "validator_service", "devstack", "bench", "deploy"]
ALLOWED = {("common/db.py", "transaction"), ("common/db.py", "checkpoint")}


def commits(root: Path, folders: list[str]) -> list[tuple[str, str, int]]:
    """Every `.commit(...)` call in the code under `root`'s `folders`: file, enclosing function, line."""
    found = []
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for function in ast.walk(tree):
                if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for node in ast.walk(function):
                    if (
                        isinstance(node, ast.Call)
                        and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "commit"
                    ):
                        found.append((str(path.relative_to(root)), function.name, node.lineno))
    return found


def test_only_the_transaction_and_the_checkpoint_commit() -> None:
    found = commits(ROOT, CODE)
    assert {(path, function) for path, function, _ in found} == ALLOWED, found


def test_the_scan_finds_a_commit_where_there_is_one(tmp_path: Path) -> None:
    # The check above must be able to fail: a flow that commits by itself is found.
    (tmp_path / "service").mkdir()
    (tmp_path / "service" / "flows.py").write_text("async def flow(db):\n    await db.commit()\n")
    assert commits(tmp_path, ["service"]) == [("service/flows.py", "flow", 2)]
