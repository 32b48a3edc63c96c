"""Queue depth as CloudWatch embedded metrics: what the deployment scales the validator on and alarms on."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.helpers import eventually, in_process
from tests.integration.validator.conftest import Depot
from validator_service.app import create_app
from validator_service.settings import ValidatorSettings


async def test_queue_depth_is_logged_as_embedded_metrics(depot: Depot, capsys: pytest.CaptureFixture[str]) -> None:
    settings = ValidatorSettings(**(depot.validator_settings | {"queue_metrics_seconds": 0.2, "validation_workers": 1}))
    app = create_app(settings)
    async with in_process(app):
        for validation in (depot.validator_app.state.validation, app.state.validation):
            await validation.worker.stop()  # the job below stays queued
        await depot.create("pkg")
        await depot.upload("pkg", "1.0.0", b"bytes")
        capsys.readouterr()
        by_queue: dict[str, dict[str, Any]] = {}

        def logged_both() -> bool:
            lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
            by_queue.update((line["Queue"], line) for line in lines if line.get("event") == "queue_depth")
            return {"validation", "verdicts"} <= set(by_queue)

        await eventually(logged_both, message="queue_depth lines for both queues")
    assert set(by_queue) == {"validation", "verdicts"}
    validation = by_queue["validation"]
    assert (validation["QueuedJobs"], validation["RunningJobs"], validation["DeadJobs"]) == (1, 0, 0)
    directive = validation["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "Depot"
    assert directive["Dimensions"] == [["Queue"]]
    assert {metric["Name"] for metric in directive["Metrics"]} == {"QueuedJobs", "RunningJobs", "DeadJobs"}
    assert isinstance(validation["_aws"]["Timestamp"], int)
