"""The CDK app: `python app.py` (or `make synth`) writes the CloudFormation template to $CDK_OUT.

Two stacks: `DepotBase` (image repositories, the signing key, service token and first admin password
secrets) and `Depot` (everything else). Context (cdk.json, or `-c name=value` on the CLI): `environment`
(staging or production), `image_tag` (the images' git commit; `make deploy` sets it),
`migrate_image_tag` (default: `image_tag`), `paused` (true: the services run no task),
`certificate_arn` and `public_url` (HTTPS), `alarm_email`, `services` (cpu, memory, min_tasks,
max_tasks per service), `max_azs`, `nat_gateways`, `db_instance_type`, `db_allocated_storage_gib`, `log_retention_days`,
`alb_idle_timeout_seconds`. The account and region come from the AWS environment when deploying
(CDK_DEFAULT_ACCOUNT, CDK_DEFAULT_REGION); a synth without them is environment-agnostic.

Secure by default:
- `allow_insecure_http` (default false): without `certificate_arn`, a `production` synth fails
  unless this is true; staging deploys plain HTTP with a warning (a first try needs no domain).
  With a certificate, port 80 only redirects to HTTPS (TLS policy ELBSecurityPolicy-TLS13-1-2-2021-06, HSTS).
- `registration_open` (default false): on AWS nobody may register; the admin makes accounts. The
  first admin is `admin`, with the password CloudFormation generated into DepotBase's secret
  (output `AdminPasswordSecret`: `aws secretsmanager get-secret-value --secret-id <it>`); auth_service
  creates it at start when no admin exists and never touches an existing account. Change the
  password after the first login; the secret is not updated.
- `nat_gateways` (default: one per AZ, `max_azs`, in production; one in staging, which saves about
  $33 a month per gateway and loses the tasks' egress in the other AZ if that AZ fails). S3 traffic
  goes through a gateway endpoint, never through NAT.
- `noncurrent_version_expiration_days` (default 30): the bucket is versioned; an object deleted or
  replaced stays recoverable this long (package_service may not delete versions).
- Services call each other through an internal load balancer (HTTP inside the VPC), reachable only
  from the services that call (package_service, validator_service) and routing only what they call.
- Each service connects to the database as its own role (secrets `<service>DatabaseSecret`), made
  and granted by the migration task, which alone has the master secret; every connection verifies
  the RDS certificate (DEPOT_DATABASE_SSL_ROOT_CERT, the bundle in the images).

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
