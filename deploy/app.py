"""The CDK app: `python app.py` (or `make synth`) writes the CloudFormation template to $CDK_OUT.

Two stacks: `DepotBase` (image repositories, the signing key and service token secrets) and
`Depot` (everything else). Context (cdk.json, or `-c name=value` on the CLI): `environment`
(staging or production), `image_tag` (the images' git commit; `make deploy` sets it),
`migrate_image_tag` (default: `image_tag`), `paused` (true: the services run no task),
`certificate_arn` and `public_url` (HTTPS), `alarm_email`, `services` (cpu, memory, min_tasks,
max_tasks per service), `max_azs`, `nat_gateways`, `db_instance_type`, `db_allocated_storage_gib`, `log_retention_days`,
`alb_idle_timeout_seconds`. The account and region come from the AWS environment when deploying
(CDK_DEFAULT_ACCOUNT, CDK_DEFAULT_REGION); a synth without them is environment-agnostic.

How the services run (depot_stack.py, "Runtime"): uvicorn's keep-alive is `alb_idle_timeout_seconds`
+ 5, set in each task's environment. `transfer_drain_seconds` (default 300) is package_service's
deregistration delay, how long streamed uploads and downloads in flight may go on when a task stops
(the other services drain for 30 s). Under `services`, `db_pool_size` and `db_max_overflow` per
service set DEPOT_DB_POOL_SIZE and DEPOT_DB_MAX_OVERFLOW; every connection they allow, at max_tasks
and twice over during a rollout, must fit 80 % of what `db_instance_type` accepts (a table of classes),
or of `db_max_connections` when given (another class, or a parameter group that sets
max_connections), or the synth fails. Without `alarm_email` the synth warns (the alarms' SNS topic
has no subscriber), and fails in production unless `allow_no_alarm_email` is true (the topic is
subscribed otherwise). `access_log_retention_days` (default 90): how long the ALB's access logs are
kept. `ecs_exec` (default true): `aws ecs execute-command` into a running task.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import aws_cdk as cdk

sys.path.insert(0, str(Path(__file__).resolve().parent))

from depot_stack import DeployConfig, DepotBaseStack, DepotStack


def build(app: cdk.App) -> DepotStack:
    """The two stacks (`DepotBase`, then `Depot`), configured from `app`'s context."""
    config = DeployConfig.from_context(app.node)
    account, region = os.environ.get("CDK_DEFAULT_ACCOUNT"), os.environ.get("CDK_DEFAULT_REGION")
    env = cdk.Environment(account=account, region=region) if account and region else None
    base = DepotBaseStack(app, "DepotBase", env=env, description="Depot: image repositories and secrets")
    return DepotStack(
        app, "Depot", config=config, base=base, env=env,
        description="Depot: a registry for versioned ML packages (ECS Fargate, ALB, RDS, S3)",
    )  # fmt: skip


def main() -> None:
    app = cdk.App(outdir=os.environ.get("CDK_OUT", str(Path(__file__).resolve().parent / "cdk.out")))
    build(app)
    app.synth()


if __name__ == "__main__":
    main()
