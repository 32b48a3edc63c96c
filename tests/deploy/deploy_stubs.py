"""Stand-ins for the commands deploy.sh runs that cannot run here, each recording its calls.

    python deploy_stubs.py cdk|docker|curl|aws ARGS...

- `cdk`, the CDK CLI: `bootstrap` writes the SSM parameter `cdk bootstrap` leaves (the templates'
  bootstrap version rule reads it); `deploy STACK ... -c name=value` synthesizes the app in the
  working directory as the CLI does (cdk.json's `app` command, CDK_CONTEXT_JSON made of cdk.json's
  context, cdk.context.json and the `-c` pairs, CDK_OUTDIR), then creates or updates the stack on
  the moto server; `destroy STACK` deletes it. Synthesized apps are cached by context (a synthesis
  takes tens of seconds here); the test may fill the cache ahead (`synth-many`). The app is
  synthesized environment-agnostic (with the account the real CLI passes, the VPC's availability
  zones would come from a lookup). Accommodations of moto: its CloudFormation skips Secrets
  Manager secrets, so the stub creates them as CloudFormation would (empty, or with a generated
  value when the template asks for one) and gives references to them their ARN; task definitions
  are adjusted as `for_moto_ecs` says, and services follow them as `follow_task_definitions` says.
- `docker`: `build` and `login` succeed; `push URI` puts an image under that tag into moto's ECR.
- `curl`: answers as a ready service would (moto's load balancer serves nothing).
- `aws`: the real AWS CLI on the moto server, except the two calls that moto cannot answer as AWS
  would: `ecs wait services-stable` (moto's services never run a task: it succeeds) and
  `ecs describe-tasks`, whose stopped containers get the exit code the test steers (the file
  `migration-exit-code`; moto reports 0 from the start) and running ones none, as on AWS. The CLI
  runs from its warm copy when the test started one (`aws_zygote.py`): the same CLI, imported once.

Environment: DEPOT_STUBS (a folder: calls.jsonl, the steering file), DEPOT_SYNTH_CACHE (the
synthesized apps), DEPOT_REAL_AWS (the AWS CLI), DEPOT_AWS_ZYGOTE (the socket of its warm copy, if
any), and the AWS_* variables of the moto server.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

STUBS = Path(os.environ.get("DEPOT_STUBS", "."))
SYNTH_CACHE = Path(os.environ.get("DEPOT_SYNTH_CACHE", str(STUBS / "synth")))
TEMPLATE_BUCKET = "cdk-stub-templates"
# What the CDK CLI (2.1148.1) adds to every app's context.
CLI_CONTEXT: dict[str, Any] = {
    "aws:cdk:enable-path-metadata": True,
    "aws:cdk:enable-asset-metadata": True,
    "aws:cdk:version-reporting": True,
    "aws:cdk:bundling-stacks": ["**"],
}


def record(tool: str, argv: list[str], **details: Any) -> None:
    with (STUBS / "calls.jsonl").open("a") as log:
        log.write(json.dumps({"tool": tool, "argv": argv, **details}) + "\n")


def calls(stubs: Path) -> list[dict[str, Any]]:
    """Every call recorded in `stubs`, in order."""
    path = stubs / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# cdk


def cli_context(app_dir: Path, pairs: list[str]) -> dict[str, Any]:
    """The context the CDK CLI hands the app in `app_dir` for `-c` `pairs` (values stay strings)."""
    context: dict[str, Any] = dict(json.loads((app_dir / "cdk.json").read_text()).get("context", {}))
    cached = app_dir / "cdk.context.json"
    if cached.exists():
        context.update(json.loads(cached.read_text()))
    for pair in pairs:
        name, _, value = pair.partition("=")
        context[name] = value
    return {**context, **CLI_CONTEXT}


def synth_dir(context: dict[str, Any]) -> Path:
    key = hashlib.sha256(json.dumps(context, sort_keys=True).encode()).hexdigest()[:16]
    return SYNTH_CACHE / key


def synthesize(app_dir: Path, context: dict[str, Any]) -> Path:
    """The cloud assembly of the app in `app_dir` for `context`, synthesized as the CLI runs the app."""
    out = synth_dir(context)
    if out.exists():
        return out
    app = json.loads((app_dir / "cdk.json").read_text())["app"]
    env = {k: v for k, v in os.environ.items() if k not in {"CDK_DEFAULT_ACCOUNT", "CDK_DEFAULT_REGION"}}
    partial = out.with_suffix(".partial")
    shutil.rmtree(partial, ignore_errors=True)
    env |= {"CDK_CONTEXT_JSON": json.dumps(context), "CDK_OUTDIR": str(partial)}
    subprocess.run(["sh", "-c", app], cwd=app_dir, env=env, check=True)
    partial.rename(out)
    return out


def synth_many(app_dir: Path, contexts: list[dict[str, Any]]) -> None:
    """Fill the cache for several contexts in one process (the CDK's start-up is paid once)."""
    sys.path.insert(0, str(app_dir))
    import aws_cdk as cdk  # noqa: PLC0415 - only this command needs it
    from app import build  # noqa: PLC0415

    for context in contexts:
        out = synth_dir(context)
        if not out.exists():
            app = cdk.App(context=context, outdir=str(out.with_suffix(".partial")))
            build(app)
            app.synth()
            out.with_suffix(".partial").rename(out)


def client(service: str) -> Any:
    import boto3  # noqa: PLC0415 - imported when needed: the `aws` stub runs for every AWS CLI call

    return boto3.client(service)


def generated_value(spec: dict[str, Any]) -> str:
    """A value like the one CloudFormation generates for `GenerateSecretString`."""
    password = secrets.token_urlsafe(24)[: int(spec.get("PasswordLength", 32))]
    if "SecretStringTemplate" in spec:
        return json.dumps({**json.loads(spec["SecretStringTemplate"]), spec["GenerateStringKey"]: password})
    return password


def create_secrets(stack: str, template: dict[str, Any]) -> dict[str, str]:
    """The template's secrets, created once as CloudFormation would; logical id -> ARN."""
    from botocore.exceptions import ClientError  # noqa: PLC0415

    manager = client("secretsmanager")
    arns: dict[str, str] = {}
    resources = template.get("Resources", {})
    for logical, resource in resources.items():
        if resource["Type"] != "AWS::SecretsManager::Secret":
            continue
        properties = resource.get("Properties", {})
        name = properties.get("Name", f"{stack}-{logical}")
        try:
            arns[logical] = manager.describe_secret(SecretId=name)["ARN"]
            continue
        except ClientError as error:
            if error.response["Error"]["Code"] != "ResourceNotFoundException":
                raise
        value: dict[str, str] = {}
        if "SecretString" in properties:
            value = {"SecretString": properties["SecretString"]}
        elif "GenerateSecretString" in properties:
            value = {"SecretString": generated_value(properties["GenerateSecretString"])}
        description = properties.get("Description")  # may be an intrinsic function: left out then
        if isinstance(description, str):
            value["Description"] = description
        created = manager.create_secret(Name=name, **value)
        arns[logical] = created["ARN"]
    for logical, resource in resources.items():
        if resource["Type"] == "AWS::SecretsManager::SecretTargetAttachment":
            arns[logical] = arns[resource["Properties"]["SecretId"]["Ref"]]  # its Ref is the secret's ARN
    return arns


def resolve(node: Any, arns: dict[str, str]) -> Any:
    if isinstance(node, dict):
        if set(node) == {"Ref"} and node["Ref"] in arns:
            return arns[node["Ref"]]
        return {key: resolve(value, arns) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(item, arns) for item in node]
    return node


def camel_case(node: Any) -> Any:
    """CloudFormation's PascalCase keys as the ECS API spells them; intrinsic functions left as they are."""
    if isinstance(node, list):
        return [camel_case(item) for item in node]
    if not isinstance(node, dict) or "Ref" in node or any(key.startswith("Fn::") for key in node):
        return node
    return {(key[:1].lower() + key[1:] if re.fullmatch(r"[A-Z]\w*", key) else key): camel_case(value)
            for key, value in node.items()}  # fmt: skip


def for_moto_ecs(template: dict[str, Any]) -> None:
    """Task definitions as moto's ECS can take them, on update as on create.

    moto's CloudFormation camel-cases the container definitions when it creates a task definition,
    not when it updates one (then describe-task-definition loses them): they are written camel-cased
    here. And its run-task sums the containers' memory, which a Fargate task definition gives the
    task: each container is given the task's.
    """
    for resource in template.get("Resources", {}).values():
        if resource["Type"] == "AWS::ECS::TaskDefinition":
            properties = resource["Properties"]
            properties["ContainerDefinitions"] = [
                {"memory": int(properties["Memory"]), **camel_case(container)}
                for container in properties["ContainerDefinitions"]
            ]


def follow_task_definitions(stack: str, template: dict[str, Any]) -> None:
    """Point each service at its task definition's new revision, as CloudFormation's `Ref` would.

    moto updates a task definition that changed (a new revision) but not the service whose template
    text did not change, though the `Ref` it holds now means the new revision.
    """
    cloudformation, ecs = client("cloudformation"), client("ecs")
    physical = {
        resource.get("LogicalResourceId"): resource.get("PhysicalResourceId")
        for resource in cloudformation.describe_stack_resources(StackName=stack)["StackResources"]
    }
    for logical, resource in template.get("Resources", {}).items():
        if resource["Type"] != "AWS::ECS::Service":
            continue
        cluster = physical[resource["Properties"]["Cluster"]["Ref"]]
        wanted = physical[resource["Properties"]["TaskDefinition"]["Ref"]]
        [service] = ecs.describe_services(cluster=cluster, services=[physical[logical]])["services"]
        if service["taskDefinition"] != wanted:
            ecs.update_service(cluster=cluster, service=service["serviceName"], taskDefinition=wanted)
        # Application Auto Scaling raises a service below its scalable target's new minimum to it
        # (an unpaused service, whose template no longer sets DesiredCount); moto does not.
        targets = [
            target for target in template["Resources"].values()
            if target["Type"] == "AWS::ApplicationAutoScaling::ScalableTarget" and f'"{logical}"' in json.dumps(target)
        ]  # fmt: skip
        minimum = max((int(target["Properties"]["MinCapacity"]) for target in targets), default=0)
        if "DesiredCount" not in resource["Properties"] and service["desiredCount"] < minimum:
            ecs.update_service(cluster=cluster, service=service["serviceName"], desiredCount=minimum)


def deploy_stack(stack: str, assembly: Path) -> int:
    from botocore.exceptions import ClientError  # noqa: PLC0415

    template = json.loads((assembly / f"{stack}.template.json").read_text())
    # moto's CloudFormation fails on a dashboard (it cannot resolve a target group's attributes in its
    # body): left out here as in test_stack.py, and checked on the template (test_runtime.py).
    template["Resources"] = {
        name: resource for name, resource in template.get("Resources", {}).items()
        if resource["Type"] != "AWS::CloudWatch::Dashboard"
    }  # fmt: skip
    for_moto_ecs(template)
    body = json.dumps(resolve(template, create_secrets(stack, template)))
    deployed = STUBS / "deployed" / f"{stack}.json"
    cloudformation = client("cloudformation")
    exists = True
    try:
        status = cloudformation.describe_stacks(StackName=stack)["Stacks"][0]["StackStatus"]
    except ClientError:
        exists, status = False, "NONE"
    if exists and deployed.exists() and deployed.read_text() == body and status.endswith("_COMPLETE"):
        print(f" ✅  {stack} (no changes)")
        return 0
    s3 = client("s3")
    with contextlib.suppress(ClientError):
        s3.create_bucket(Bucket=TEMPLATE_BUCKET, CreateBucketConfiguration={"LocationConstraint": s3.meta.region_name})
    key = f"{stack}-{hashlib.sha256(body.encode()).hexdigest()[:12]}.json"
    s3.put_object(Bucket=TEMPLATE_BUCKET, Key=key, Body=body.encode())
    options = {
        "StackName": stack,
        "TemplateURL": f"https://{TEMPLATE_BUCKET}.s3.amazonaws.com/{key}",
        "Capabilities": ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"],
    }
    try:
        (cloudformation.update_stack if exists else cloudformation.create_stack)(**options)
    except ClientError as error:
        print(f" ❌  {stack} failed: {error}", file=sys.stderr)
        return 1
    final = cloudformation.describe_stacks(StackName=stack)["Stacks"][0]
    if final["StackStatus"] not in {"CREATE_COMPLETE", "UPDATE_COMPLETE"}:
        print(f" ❌  {stack} {final['StackStatus']}: {final.get('StackStatusReason')}", file=sys.stderr)
        return 1
    follow_task_definitions(stack, template)
    deployed.parent.mkdir(exist_ok=True)
    deployed.write_text(body)
    print(f" ✅  {stack}\n\nOutputs:")
    for output in final.get("Outputs", []):
        print(f"{stack}.{output['OutputKey']} = {output['OutputValue']}")
    return 0


def cdk(argv: list[str]) -> int:
    from botocore.exceptions import ClientError  # noqa: PLC0415

    pairs = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg in {"-c", "--context"}]
    record("cdk", argv)
    command = argv[0] if argv else ""
    app_dir = Path.cwd()
    if command == "bootstrap":
        synthesize(app_dir, cli_context(app_dir, pairs))  # the CLI synthesizes the app to find its environments
        client("ssm").put_parameter(Name="/cdk-bootstrap/hnb659fds/version", Value="30", Type="String", Overwrite=True)
        return 0
    if command == "deploy":
        stack = argv[1]
        try:
            client("ssm").get_parameter(Name="/cdk-bootstrap/hnb659fds/version")
        except ClientError:
            print(f" ❌  {stack} failed: the environment is not bootstrapped (cdk bootstrap)", file=sys.stderr)
            return 1
        return deploy_stack(stack, synthesize(app_dir, cli_context(app_dir, pairs)))
    if command == "destroy":
        client("cloudformation").delete_stack(StackName=argv[1])
        (STUBS / "deployed" / f"{argv[1]}.json").unlink(missing_ok=True)
        return 0
    print(f"cdk stub: {command!r} is not emulated", file=sys.stderr)
    return 2


# docker, curl


def docker(argv: list[str]) -> int:
    record("docker", argv)
    if argv[:1] == ["login"]:
        sys.stdin.read()  # the password: read, never recorded
    if argv[:1] == ["push"]:
        uri = argv[1]
        repository, _, tag = uri.split("/", 1)[1].rpartition(":")
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1,
                       "digest": "sha256:" + hashlib.sha256(uri.encode()).hexdigest()},
            "layers": [],
        }  # fmt: skip
        client("ecr").put_image(repositoryName=repository, imageManifest=json.dumps(manifest), imageTag=tag)
    return 0


def curl(argv: list[str]) -> int:
    record("curl", argv)
    print('{"status": "ready"}', end="")
    return 0


# aws


def aws_text(value: Any) -> str:
    """`value` as the AWS CLI's `--output text` prints it (scalars, lists and lists of lists)."""
    if isinstance(value, list):
        if all(not isinstance(item, list | dict) for item in value):
            return "\t".join(aws_text(item) for item in value)
        return "\n".join(aws_text(item) for item in value)
    return "None" if value is None else str(value)


def steer_exit_codes(tasks: list[dict[str, Any]]) -> None:
    """Stopped containers get the steered exit code (fixed per task at first sight); running ones none."""
    fixed_path = STUBS / "exit-codes.json"
    fixed: dict[str, int] = json.loads(fixed_path.read_text()) if fixed_path.exists() else {}
    steering = STUBS / "migration-exit-code"
    for task in tasks:
        for container in task.get("containers", []):
            container.pop("exitCode", None)
        if task.get("lastStatus") != "STOPPED":
            continue
        if task["taskArn"] not in fixed:
            fixed[task["taskArn"]] = int(steering.read_text()) if steering.exists() else 0
        for container in task.get("containers", []):
            container["exitCode"] = fixed[task["taskArn"]]
    fixed_path.write_text(json.dumps(fixed))


def aws_call(argv: list[str], stdout: int = 1) -> int:
    """`aws ARGV` with this process's stdin, `stdout` and stderr: its exit status.

    Run by the warm CLI of DEPOT_AWS_ZYGOTE when there is one (`aws_zygote.py`), else by the CLI itself.
    """
    zygote = os.environ.get("DEPOT_AWS_ZYGOTE")
    if zygote:
        import aws_zygote  # noqa: PLC0415 - beside this file, which runs as a script when it does this

        code = aws_zygote.call(zygote, argv, stdout)
        if code is not None:
            return code
    return subprocess.run([os.environ["DEPOT_REAL_AWS"], *argv], stdout=stdout, check=False).returncode


def aws(argv: list[str]) -> int:
    record("aws", argv)
    if argv[:3] == ["ecs", "wait", "services-stable"]:
        return 0
    if argv[:2] != ["ecs", "describe-tasks"]:
        return aws_call(argv)
    query, output, rest = None, "json", []
    arguments = iter(argv)
    for argument in arguments:
        if argument == "--query":
            query = next(arguments)
        elif argument == "--output":
            output = next(arguments)
        else:
            rest.append(argument)
    with tempfile.TemporaryFile() as answer:
        code = aws_call([*rest, "--output", "json"], stdout=answer.fileno())
        if code != 0:
            return code
        answer.seek(0)
        described = json.loads(answer.read())
    steer_exit_codes(described.get("tasks", []))
    import jmespath  # noqa: PLC0415

    value = jmespath.search(query, described) if query else described
    print(aws_text(value) if output == "text" else json.dumps(value, indent=4))
    return 0


def main() -> int:
    tool, argv = sys.argv[1], sys.argv[2:]
    if tool == "synth-many":
        synth_many(Path(argv[0]), json.loads(Path(argv[1]).read_text()))
        return 0
    return {"cdk": cdk, "docker": docker, "curl": curl, "aws": aws}[tool](argv)


if __name__ == "__main__":
    sys.exit(main())
