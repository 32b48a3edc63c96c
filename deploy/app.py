"""The CDK app: `python app.py` (or `make synth`) writes the CloudFormation template to $CDK_OUT.

Two stacks: `DepotBase` (image repositories, the signing key, service token and first admin password
secrets) and `Depot` (everything else). Context (cdk.json, or `-c name=value` on the CLI): `environment`
(staging or production), `image_tag` (the images' tag; `make deploy` sets it),
`migrate_image_tag` (default: `image_tag`), `paused` (true: the services run no task),
`certificate_arn` and `public_url` (HTTPS), `alarm_email`, `services` (cpu, memory, min_tasks,
max_tasks per service), `max_azs`, `nat_gateways`, `db_instance_type`, `db_allocated_storage_gib`, `log_retention_days`,
`alb_idle_timeout_seconds`, `cpu_architecture` (x86_64 or arm64: the tasks' and the images' platform).
The account and region come from the AWS environment when deploying (CDK_DEFAULT_ACCOUNT,
CDK_DEFAULT_REGION); a synth without them is environment-agnostic.

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

Run by the CDK CLI (`cdk deploy`, `cdk synth`), the CLI hands over the context and the output folder.
Run directly (`python app.py -c name=value ...`, as `make synth` does), the app reads the same
context as the CLI would: cdk.json's, then cdk.context.json's, then the command line's, as strings
like the CLI's `-c`; so the templates reviewed are the ones `cdk deploy` deploys.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import aws_cdk as cdk

sys.path.insert(0, str(Path(__file__).resolve().parent))

from depot_stack import DeployConfig, DepotBaseStack, DepotStack

HERE = Path(__file__).resolve().parent

# What the CLI adds to every app's context (aws-cdk 2.1148.1): path and asset metadata, the
# version-reporting resource, bundling of every stack.
CLI_CONTEXT: dict[str, Any] = {
    "aws:cdk:enable-path-metadata": True,
    "aws:cdk:enable-asset-metadata": True,
    "aws:cdk:version-reporting": True,
    "aws:cdk:bundling-stacks": ["**"],
}


def build(app: cdk.App) -> DepotStack:
    """The two stacks (`DepotBase`, then `Depot`), configured from `app`'s context."""
    config = DeployConfig.from_context(app.node)
    account, region = os.environ.get("CDK_DEFAULT_ACCOUNT"), os.environ.get("CDK_DEFAULT_REGION")
    env = cdk.Environment(account=account, region=region) if account and region else None
    base = DepotBaseStack(
        app, "DepotBase", env=env, image_platform=config.image_platform,
        description="Depot: image repositories and secrets",
    )  # fmt: skip
    return DepotStack(
        app, "Depot", config=config, base=base, env=env,
        description="Depot: a registry for versioned ML packages (ECS Fargate, ALB, RDS, S3)",
    )  # fmt: skip


def context_pair(text: str) -> tuple[str, str]:
    """`name=value` as the CDK CLI's `-c` reads it: the value is a string, even `5` or `{...}`."""
    name, separator, value = text.partition("=")
    if not name or not separator:
        raise argparse.ArgumentTypeError(f"expected name=value, got {text!r}")
    return name, value


def project_context(directory: Path, command_line: list[tuple[str, str]]) -> dict[str, Any]:
    """The context the CDK CLI gives the app in `directory`: cdk.json, cdk.context.json, `-c`."""
    context: dict[str, Any] = dict(json.loads((directory / "cdk.json").read_text()).get("context", {}))
    cached = directory / "cdk.context.json"  # the CLI's cache of lookups (availability zones, ...)
    if cached.exists():
        context.update(json.loads(cached.read_text()))
    context.update(command_line)
    return {**context, **CLI_CONTEXT}


def main(argv: list[str] | None = None) -> None:
    if "CDK_OUTDIR" in os.environ:  # run by the CDK CLI: the context and output folder are its
        app = cdk.App()
    else:
        parser = argparse.ArgumentParser(prog="python app.py", description="Synthesize Depot's templates.")
        parser.add_argument("-c", "--context", type=context_pair, action="append", default=[],
                            metavar="NAME=VALUE", help="a context value, as `cdk -c` takes it")  # fmt: skip
        args = parser.parse_args(argv)
        app = cdk.App(
            context=project_context(HERE, args.context), outdir=os.environ.get("CDK_OUT", str(HERE / "cdk.out"))
        )
    build(app)
    app.synth()


if __name__ == "__main__":
    main()
