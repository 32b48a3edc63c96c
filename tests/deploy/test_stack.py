"""The AWS stack, proven offline: assertions on the synthesized template, cfn-lint, and a moto deploy.

No AWS account is used. What moto's CloudFormation does not create (it skips Secrets Manager
secrets, autoscaling and alarms, see ../shared/docs/ENVIRONMENT.md) is checked on the template
instead; the load balancer's rules are deployed to moto and read back through its ELBv2 API.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")

import aws_cdk as cdk
from aws_cdk.assertions import Match, Template

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy"))

from depot_stack import DeployConfig, DepotBaseStack, DepotStack  # noqa: E402

from tests.helpers import moto_server  # noqa: E402

SERVICES = {
    "auth_service": "/auth",
    "package_service": "/packages",
    "validator_service": "/validate",
    "web_service": "",
}
API_SERVICES = {name: prefix for name, prefix in SERVICES.items() if prefix}

# Synthesis runs the CDK's JavaScript under Node (seconds per stack), `make synth` and cfn-lint take
# half a minute on an idle machine: the slow tier, with room for a loaded one.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def synthesize_both(context: dict[str, Any] | None = None, **stack_options: Any) -> tuple[Template, Template]:
    """The templates of `DepotBase` and `Depot`."""
    app = cdk.App(context={**json.loads((ROOT / "deploy" / "cdk.json").read_text())["context"], **(context or {})})
    base = DepotBaseStack(app, "DepotBase", **stack_options)
    stack = DepotStack(app, "Depot", config=DeployConfig.from_context(app.node), base=base, **stack_options)
    return Template.from_stack(base), Template.from_stack(stack)


def synthesize(context: dict[str, Any] | None = None) -> Template:
    return synthesize_both(context)[1]


@pytest.fixture(scope="module")
def template() -> Template:
    return synthesize({"image_tag": "abc1234"})


def resources(template: Template, kind: str) -> dict[str, Any]:
    found: dict[str, Any] = template.find_resources(kind)
    return found


def public(found: dict[str, Any], kind: str = "") -> dict[str, Any]:
    """The resources of the internet-facing load balancer (the internal one's ids start with `Internal`)."""
    if kind == "rules":
        return {
            name: r for name, r in found.items() if r["Properties"]["ListenerArn"]["Ref"].startswith("LoadBalancer")
        }
    return {name: resource for name, resource in found.items() if name.startswith("LoadBalancer")}


def test_one_listener_rule_per_prefix_and_web_service_for_the_rest(template: Template) -> None:
    rules = public(resources(template, "AWS::ElasticLoadBalancingV2::ListenerRule"), "rules")
    paths = sorted(
        (rule["Properties"]["Priority"], rule["Properties"]["Conditions"][0]["PathPatternConfig"]["Values"])
        for rule in rules.values()
    )
    assert paths == [
        (5, ["/auth/metrics", "/packages/metrics", "/validate/metrics", "/metrics"]),  # a 404: metrics stay inside
        (10, ["/auth*"]), (20, ["/packages*"]), (30, ["/validate*"]),
    ]  # fmt: skip
    metrics_rule = next(rule for rule in rules.values() if rule["Properties"]["Priority"] == 5)
    assert metrics_rule["Properties"]["Actions"][0]["FixedResponseConfig"]["StatusCode"] == "404"
    template.has_resource_properties(
        "AWS::ElasticLoadBalancingV2::Listener",
        {
            "Port": 80,
            "DefaultActions": [{"Type": "forward", "TargetGroupArn": {"Ref": Match.string_like_regexp("webservice")}}],
        },
    )
    template.has_resource_properties(
        "AWS::ElasticLoadBalancingV2::LoadBalancer",
        {"Scheme": "internet-facing", "LoadBalancerAttributes": Match.array_with(
            [{"Key": "idle_timeout.timeout_seconds", "Value": "300"}])},
    )  # fmt: skip


def test_https_with_a_certificate_redirects_http() -> None:
    template = synthesize({"certificate_arn": "arn:aws:acm:eu-west-1:111111111111:certificate/x",
                           "public_url": "https://depot.example.com"})  # fmt: skip
    template.has_resource_properties("AWS::ElasticLoadBalancingV2::Listener", {"Port": 443, "Protocol": "HTTPS"})
    template.has_resource_properties(
        "AWS::ElasticLoadBalancingV2::Listener",
        {"Port": 80, "DefaultActions": [Match.object_like({"Type": "redirect"})]},
    )
    with pytest.raises(ValueError, match="public_url"):
        synthesize({"certificate_arn": "arn:aws:acm:eu-west-1:111111111111:certificate/x"})


def test_every_service_is_fargate_in_private_subnets_with_a_safe_rollout(template: Template) -> None:
    services = resources(template, "AWS::ECS::Service")
    assert len(services) == 4
    public_subnets = {
        name for name, subnet in resources(template, "AWS::EC2::Subnet").items()
        if subnet["Properties"].get("MapPublicIpOnLaunch")
    }  # fmt: skip
    for service in services.values():
        properties = service["Properties"]
        assert properties["LaunchType"] == "FARGATE"
        network = properties["NetworkConfiguration"]["AwsvpcConfiguration"]
        assert network["AssignPublicIp"] == "DISABLED"
        assert {subnet["Ref"] for subnet in network["Subnets"]}.isdisjoint(public_subnets)
        deployment = properties["DeploymentConfiguration"]
        assert deployment["MinimumHealthyPercent"] == 100
        assert deployment["DeploymentCircuitBreaker"] == {"Enable": True, "Rollback": True}


def test_target_groups_check_readiness(template: Template) -> None:
    paths = sorted(
        tg["Properties"]["HealthCheckPath"]
        for tg in public(resources(template, "AWS::ElasticLoadBalancingV2::TargetGroup")).values()
    )
    assert paths == sorted(f"{prefix}/health/ready" for prefix in SERVICES.values())


def test_tasks_take_sizes_from_context_and_secrets_from_secrets_manager() -> None:
    template = synthesize({"services": {"validator_service": {"cpu": 2048, "memory": 4096}}})
    definitions = resources(template, "AWS::ECS::TaskDefinition")
    sizes = {d["Properties"]["ContainerDefinitions"][0]["Name"]: (d["Properties"]["Cpu"], d["Properties"]["Memory"])
             for d in definitions.values()}  # fmt: skip
    assert sizes["validator_service"] == ("2048", "4096")
    assert sizes["auth_service"] == ("256", "512")
    for definition in definitions.values():
        container = definition["Properties"]["ContainerDefinitions"][0]
        names = {variable["Name"] for variable in container.get("Environment", [])}
        assert not {n for n in names if any(word in n for word in ("PASSWORD", "SECRET", "TOKEN", "SIGNING_KEY"))
                    if not n.endswith("_SECRET_ID")}, names  # fmt: skip
        secrets = {secret["Name"] for secret in container.get("Secrets", [])}
        if container["Name"] == "web_service":
            assert secrets == {"DEPOT_SESSION_KEY"}, "web_service opens no database connection"
        else:
            assert "DEPOT_DATABASE_PASSWORD" in secrets
    auth = next(d for d in definitions.values() if d["Properties"]["ContainerDefinitions"][0]["Name"] == "auth_service")
    assert {s["Name"] for s in auth["Properties"]["ContainerDefinitions"][0]["Secrets"]} == {
        "DEPOT_DATABASE_PASSWORD", "DEPOT_SIGNING_KEY", "DEPOT_ADMIN_PASSWORD",
    }  # fmt: skip


def test_data_is_encrypted_private_and_backed_up(template: Template) -> None:
    template.has_resource_properties("AWS::S3::Bucket", {
        "BucketEncryption": {"ServerSideEncryptionConfiguration": [Match.object_like({
            "ServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": Match.any_value()}})]},
        "PublicAccessBlockConfiguration": {"BlockPublicAcls": True, "BlockPublicPolicy": True,
                                           "IgnorePublicAcls": True, "RestrictPublicBuckets": True},
        "LifecycleConfiguration": {"Rules": Match.array_with([Match.object_like(
            {"AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 3}, "Status": "Enabled"})])},
    })  # fmt: skip
    template.has_resource_properties("AWS::KMS::Key", {"EnableKeyRotation": True})
    template.has_resource_properties("AWS::S3::BucketPolicy", {"PolicyDocument": {"Statement": Match.array_with([
        Match.object_like({"Effect": "Deny", "Condition": {"Bool": {"aws:SecureTransport": "false"}}})])}})  # fmt: skip
    template.has_resource_properties("AWS::RDS::DBInstance", {
        "StorageEncrypted": True, "PubliclyAccessible": False, "BackupRetentionPeriod": 7, "Engine": "postgres",
    })  # fmt: skip


def test_production_protects_the_database() -> None:
    template = synthesize(
        {"environment": "production", "allow_insecure_http": "true", "alarm_email": "ops@example.com"}
    )
    template.has_resource_properties("AWS::RDS::DBInstance", {"DeletionProtection": True, "MultiAZ": True})
    template.has_resource("AWS::RDS::DBInstance", {"DeletionPolicy": "Snapshot"})
    template.has_resource("AWS::S3::Bucket", {"DeletionPolicy": "Retain"})


def policy_actions(template: Template, role_prefix: str) -> list[str]:
    """Every action granted to the task role whose logical id starts with `role_prefix`."""
    roles = [name for name in resources(template, "AWS::IAM::Role") if name.startswith(role_prefix)]
    assert len(roles) == 1, roles
    actions: list[str] = []
    for policy in resources(template, "AWS::IAM::Policy").values():
        if {"Ref": roles[0]} in policy["Properties"]["Roles"]:
            for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
                granted = statement["Action"]
                actions += [granted] if isinstance(granted, str) else granted
    return actions


def test_task_roles_have_least_privilege(template: Template) -> None:
    auth = policy_actions(template, "authserviceTaskRole")
    assert not [a for a in auth if a.startswith(("s3:", "kms:"))], "auth_service has no S3 access"
    validator = policy_actions(template, "validatorserviceTaskRole")
    assert any(a.startswith("s3:GetObject") for a in validator)
    writes = [a for a in validator if a.startswith("s3:") and not a.startswith(("s3:Get", "s3:List"))]
    assert writes == [], "the validator reads only"
    assert not [a for a in validator if a in {"kms:Encrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*"}]
    package = policy_actions(template, "packageserviceTaskRole")
    assert {"s3:PutObject", "s3:DeleteObject*", "s3:Abort*", "s3:ListBucketMultipartUploads"} <= set(package)


def test_alarms_cover_errors_latency_health_resources_and_dead_jobs(template: Template) -> None:
    alarms = resources(template, "AWS::CloudWatch::Alarm").values()
    metrics = {(a["Properties"].get("Namespace"), a["Properties"].get("MetricName")) for a in alarms}
    for expected in [
        ("AWS/ApplicationELB", "HTTPCode_Target_5XX_Count"), ("AWS/ApplicationELB", "TargetResponseTime"),
        ("AWS/ApplicationELB", "UnHealthyHostCount"), ("AWS/ECS", "CPUUtilization"), ("AWS/ECS", "MemoryUtilization"),
        ("AWS/RDS", "CPUUtilization"), ("AWS/RDS", "FreeStorageSpace"), ("Depot", "DeadJobs"),
        ("AWS/ApplicationELB", "HTTPCode_ELB_5XX_Count"),
    ]:  # fmt: skip
        assert expected in metrics, expected
    assert all(a["Properties"]["AlarmActions"] for a in alarms), "every alarm notifies the SNS topic"


def test_the_validator_scales_on_its_queue_and_the_others_on_cpu_and_requests(template: Template) -> None:
    policies = resources(template, "AWS::ApplicationAutoScaling::ScalingPolicy").values()
    kinds = sorted(p["Properties"]["PolicyType"] for p in policies)
    assert kinds.count("TargetTrackingScaling") == 8, "CPU and requests per target, for each service"
    assert kinds.count("StepScaling") == 2, "the validator's backlog (a scale-out and a scale-in step policy)"
    backlog = {
        "Namespace": "Depot",
        "MetricName": "QueuedJobs",
        "Dimensions": [{"Name": "Queue", "Value": "validation"}],
    }
    template.has_resource_properties("AWS::CloudWatch::Alarm", backlog)


def test_a_migration_task_runs_the_migrate_image(template: Template) -> None:
    migrate = [d for d in resources(template, "AWS::ECS::TaskDefinition").values()
               if d["Properties"]["ContainerDefinitions"][0]["Name"] == "migrate"]  # fmt: skip
    assert len(migrate) == 1
    command = " ".join(migrate[0]["Properties"]["ContainerDefinitions"][0]["Command"])
    assert "python -m common.migrations upgrade" in command
    assert "service-token depot-service --secret-id" in command


# cfn-lint and moto


def test_make_synth_writes_templates_that_pass_cfn_lint(tmp_path: Path) -> None:
    out = tmp_path / "cdk.out"
    synth = subprocess.run(["make", "synth", f"CDK_OUT={out}"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert synth.returncode == 0, synth.stdout + synth.stderr
    templates = sorted(out.glob("*.template.json"))
    assert [t.name for t in templates] == ["Depot.template.json", "DepotBase.template.json"]
    linted = subprocess.run(
        [Path(sys.executable).parent / "cfn-lint", *map(str, templates)], capture_output=True, text=True, check=False
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_make_deploy_runs_its_steps_in_order() -> None:
    planned = subprocess.run(["make", "-n", "deploy"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    steps = [line.split("deploy/deploy.sh ")[1] for line in planned.splitlines() if "deploy/deploy.sh " in line]
    assert steps == [
        "prerequisites", "base", "signing-key", "images", "migrate-image", "migrate", "services",
        "wait-stable", "smoke",
    ]  # fmt: skip
    script = (ROOT / "deploy" / "deploy.sh").read_text()
    for step in steps:
        assert f"\n{step.replace('-', '_')}() {{" in script, f"deploy.sh has no step {step}"
    assert subprocess.run(["bash", "-n", ROOT / "deploy" / "deploy.sh"], check=False).returncode == 0


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


# moto's CloudFormation skips these resource types; a `Ref` to one would resolve to nothing (an IAM
# statement without a resource, which it then refuses), so the test gives such references an ARN.
MOTO_SKIPS = {"AWS::SecretsManager::Secret", "AWS::SecretsManager::SecretTargetAttachment"}
# moto's CloudFormation fails on these (it cannot resolve a target group's attributes in a dashboard's
# body): they are left out of what it deploys, and checked on the template (tests/deploy/test_runtime.py).
MOTO_FAILS = {"AWS::CloudWatch::Dashboard"}


def for_moto(template: dict[str, Any]) -> dict[str, Any]:
    template = {**template, "Resources": {
        name: resource for name, resource in template["Resources"].items() if resource["Type"] not in MOTO_FAILS
    }}  # fmt: skip
    skipped = {name for name, resource in template["Resources"].items() if resource["Type"] in MOTO_SKIPS}

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) == {"Ref"} and node["Ref"] in skipped:
                return f"arn:aws:secretsmanager:eu-west-1:123456789012:secret:{node['Ref']}"
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(template)
    return resolved


def test_the_template_deploys_to_moto_and_the_load_balancer_rules_read_back(moto_url: str) -> None:
    # Without the bootstrap version rule: it reads an SSM parameter that only a bootstrapped account has.
    base, template = synthesize_both(synthesizer=cdk.DefaultStackSynthesizer(generate_bootstrap_version_rule=False))
    body = json.dumps(for_moto(template.to_json()))
    options = {"endpoint_url": moto_url, "region_name": "eu-west-1",
               "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}  # fmt: skip
    s3 = boto3.client("s3", **options)
    s3.create_bucket(Bucket="templates", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.put_object(Bucket="templates", Key="depot.json", Body=body.encode())  # over the 51,200-byte inline limit
    cloudformation = boto3.client("cloudformation", **options)
    cloudformation.create_stack(StackName="DepotBase", TemplateBody=json.dumps(for_moto(base.to_json())))
    assert cloudformation.describe_stacks(StackName="DepotBase")["Stacks"][0]["StackStatus"] == "CREATE_COMPLETE"
    cloudformation.create_stack(
        # moto finds the bucket in the host name, as S3 URLs for CloudFormation are written.
        StackName="Depot",
        TemplateURL="https://templates.s3.amazonaws.com/depot.json",
        Capabilities=["CAPABILITY_IAM"],
    )
    stack = cloudformation.describe_stacks(StackName="Depot")["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")

    elbv2 = boto3.client("elbv2", **options)
    balancers = elbv2.describe_load_balancers()["LoadBalancers"]
    assert sorted(balancer["Scheme"] for balancer in balancers) == ["internal", "internet-facing"]
    balancers = [balancer for balancer in balancers if balancer["Scheme"] == "internet-facing"]
    listeners = elbv2.describe_listeners(LoadBalancerArn=balancers[0]["LoadBalancerArn"])["Listeners"]
    assert [listener["Port"] for listener in listeners] == [80]
    assert listeners[0]["DefaultActions"][0]["Type"] == "forward", "the rest goes to web_service"
    rules = elbv2.describe_rules(ListenerArn=listeners[0]["ListenerArn"])["Rules"]
    routed = sorted(
        (rule["Priority"], rule["Conditions"][0]["PathPatternConfig"]["Values"][0])
        for rule in rules if not rule["IsDefault"]
    )  # fmt: skip
    assert routed == [("10", "/auth*"), ("20", "/packages*"), ("30", "/validate*"), ("5", "/auth/metrics")]
    target_groups = elbv2.describe_target_groups(LoadBalancerArn=balancers[0]["LoadBalancerArn"])["TargetGroups"]
    assert sorted(tg["HealthCheckPath"] for tg in target_groups) == sorted(
        f"{p}/health/ready" for p in SERVICES.values()
    )

    ecs = boto3.client("ecs", **options)
    clusters = ecs.list_clusters()["clusterArns"]
    assert len(clusters) == 1
    assert len(ecs.list_services(cluster=clusters[0])["serviceArns"]) == 4
