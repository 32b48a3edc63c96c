"""The CDK app: `python app.py` (or `make synth`) writes the CloudFormation template to $CDK_OUT.

Two stacks: `DepotBase` (image repositories, the signing key and service token secrets) and
`Depot` (everything else). Context (cdk.json, or `-c name=value` on the CLI): `environment`
(staging or production), `image_tag` (the images' git commit; `make deploy` sets it),
`migrate_image_tag` (default: `image_tag`), `paused` (true: the services run no task),
`certificate_arn` and `public_url` (HTTPS), `alarm_email`, `services` (cpu, memory, min_tasks,
max_tasks per service), `max_azs`, `nat_gateways`, `db_instance_type`, `db_allocated_storage_gib`, `log_retention_days`,
`alb_idle_timeout_seconds`. The account and region come from the AWS environment when deploying
(CDK_DEFAULT_ACCOUNT, CDK_DEFAULT_REGION); a synth without them is environment-agnostic.
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
