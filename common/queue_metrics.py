"""Queue depth as metrics, in one place: a Prometheus gauge read at scrape time (`/metrics` of
every service with a queue), and CloudWatch embedded-metric lines (what the deployment scales the
validator on, and alarms on when jobs die).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Gauge
from sqlalchemy.ext.asyncio import AsyncEngine

from common.logging import error_fields
from common.queue import queue_depth

log = structlog.get_logger("depot.queue_metrics")

METRICS_NAMESPACE = "Depot"
"""The CloudWatch namespace of the embedded metrics (the deployment's alarms and scaling read it)."""
STATUSES = ("queued", "running", "dead")
_METRIC_NAMES = {"queued": "QueuedJobs", "running": "RunningJobs", "dead": "DeadJobs"}


class QueueDepthGauge:
    """`depot_queue_jobs{queue, status}`, refreshed when `/metrics` is scraped."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._gauge = Gauge(
            "depot_queue_jobs", "Jobs in the queue by queue and status (done jobs not counted).",
            ["queue", "status"], registry=registry,
        )  # fmt: skip

    async def refresh(self, engine: AsyncEngine, limit_seconds: float) -> None:
        """Read the depth now; while the database is down the metric is left out rather than stale."""
        self._gauge.clear()
        try:
            depth = await asyncio.wait_for(queue_depth(engine), limit_seconds)
        except Exception as error:  # noqa: BLE001 - metrics must answer even while the database is down
            log.warning("queue_depth_unavailable", **error_fields(error))
            return
        for (queue, status), count in depth.items():
            self._gauge.labels(queue, status).set(count)


def emf_metrics(queue: str, counts: dict[str, int]) -> dict[str, Any]:
    """The fields of a CloudWatch embedded-metric-format line for one queue's job counts."""
    return {
        "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [{
                "Namespace": METRICS_NAMESPACE, "Dimensions": [["Queue"]],
                "Metrics": [{"Name": name, "Unit": "Count"} for name in _METRIC_NAMES.values()],
            }],
        },
        "Queue": queue,
        **{_METRIC_NAMES[status]: count for status, count in counts.items()},
    }  # fmt: skip


async def publish_queue_depth(engine: AsyncEngine, queues: Sequence[str], interval_seconds: float) -> None:
    """Log the queues' depth as CloudWatch embedded metrics every `interval_seconds`, until cancelled.

    On AWS, the awslogs driver carries the line to CloudWatch Logs, which turns it into the
    metrics `Depot/QueuedJobs`, `RunningJobs` and `DeadJobs` by `Queue`. Elsewhere it is a log line.
    """
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            depth = await queue_depth(engine)
        except Exception as error:  # noqa: BLE001 - the database may be away; the next round tries again
            log.warning("queue_depth_unavailable", **error_fields(error))
            continue
        for queue in queues:
            counts = {status: depth.get((queue, status), 0) for status in STATUSES}
            log.info("queue_depth", **emf_metrics(queue, counts))
