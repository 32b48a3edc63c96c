"""How the services run on AWS, proven on the synthesized template (issue 17's runtime items).

Health checks, keep-alive against the ALB's idle timeout, how a task stops, DesiredCount,
the validator's scaling and scale-in protection, the database connection budget, alarms that
someone receives, access logs, the dashboard, ECS Exec and the saved query. Where a value must
agree with the application (uvicorn's settings, the lifespan's shutdown, the pool settings, the
access log's fields), the check reads the application's own code or runs its command's parser.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import sys
from typing import Any

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")

import aws_cdk as cdk
from aws_cdk.assertions import Annotations, Match, Template
from uvicorn.main import main as uvicorn_command

from common.app import SHUTDOWN_DRAIN_SECONDS
from common.queue import Worker
from common.settings import CommonSettings
from tests.deploy.test_stack import ROOT, SERVICES
from tests.integration.test_containers import dockerfile_stages, image_environment, last_exec_form

sys.path.insert(0, str(ROOT / "deploy"))

from depot_stack import (
    APP_SHUTDOWN_SECONDS,
    DeployConfig,
    DepotBaseStack,
    DepotStack,
    connection_budget,
    estimated_max_connections,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CDK_CONTEXT = json.loads((ROOT / "deploy" / "cdk.json").read_text())["context"]
LISTENERS = {"auth_service": 0, "package_service": 1, "validator_service": 1}  # one per queue worker (common.queue)


def build(context: dict[str, Any] | None = None, env: cdk.Environment | None = None) -> tuple[DepotStack, Template]:
    app = cdk.App(context={**CDK_CONTEXT, **(context or {})})
    base = DepotBaseStack(app, "DepotBase", env=env)
    stack = DepotStack(app, "Depot", config=DeployConfig.from_context(app.node), base=base, env=env)
    return stack, Template.from_stack(stack)


@pytest.fixture(scope="module")
def built() -> tuple[DepotStack, Template]:
    return build({"image_tag": "abc1234"})


@pytest.fixture(scope="module")
def template(built: tuple[DepotStack, Template]) -> Template:
    return built[1]


def of_type(template: Template, kind: str) -> dict[str, Any]:
    found: dict[str, Any] = template.find_resources(kind)
    return found


def containers(template: Template) -> dict[str, dict[str, Any]]:
    """Each service's container definition, by service name."""
    found = {}
    for definition in of_type(template, "AWS::ECS::TaskDefinition").values():
        container = definition["Properties"]["ContainerDefinitions"][0]
        found[container["Name"]] = container
    return found


def environment(container: dict[str, Any]) -> dict[str, str]:
    return {variable["Name"]: variable["Value"] for variable in container.get("Environment", [])}


def target_groups(template: Template) -> dict[str, dict[str, Any]]:
    """The public load balancer's target group properties by service (from their health check path)."""
    found = {}
    for logical_id, group in of_type(template, "AWS::ElasticLoadBalancingV2::TargetGroup").items():
        if logical_id.startswith("Internal"):
            continue  # what services call of each other: no artifact moves there
        path = group["Properties"]["HealthCheckPath"]
        found[next(name for name, p in SERVICES.items() if path == f"{p}/health/ready")] = group["Properties"]
    return found


def attributes(properties: dict[str, Any], key: str) -> dict[str, Any]:
    return {a["Key"]: a["Value"] for a in properties[key]}


def public_alb(template: Template) -> dict[str, Any]:
    """The internet-facing load balancer (the services also call each other through an internal one)."""
    (balancer,) = [b for b in of_type(template, "AWS::ElasticLoadBalancingV2::LoadBalancer").values()
                   if b["Properties"]["Scheme"] == "internet-facing"]  # fmt: skip
    return balancer


def alb_attributes(template: Template) -> dict[str, Any]:
    return attributes(public_alb(template)["Properties"], "LoadBalancerAttributes")


def alarms(template: Template) -> dict[str, dict[str, Any]]:
    return {name: alarm["Properties"] for name, alarm in of_type(template, "AWS::CloudWatch::Alarm").items()}


def metric_names(alarm: dict[str, Any]) -> set[str]:
    if "MetricName" in alarm:
        return {alarm["MetricName"]}
    return {m["MetricStat"]["Metric"]["MetricName"] for m in alarm.get("Metrics", []) if "MetricStat" in m}


def role_actions(template: Template, role_prefix: str) -> list[str]:
    roles = [name for name in of_type(template, "AWS::IAM::Role") if name.startswith(role_prefix)]
    assert len(roles) == 1, roles
    actions: list[str] = []
    for policy in of_type(template, "AWS::IAM::Policy").values():
        if {"Ref": roles[0]} in policy["Properties"]["Roles"]:
            for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
                granted = statement["Action"]
                actions += [granted] if isinstance(granted, str) else granted
    return actions


# 1. Health checks


def test_containers_check_liveness_and_the_load_balancer_checks_readiness(template: Template) -> None:
    for name, prefix in SERVICES.items():
        command = " ".join(containers(template)[name]["HealthCheck"]["Command"])
        assert f"127.0.0.1:8000{prefix}/health'" in command, command
        assert "ready" not in command, "a dependency that is away must not get every container replaced"
        assert target_groups(template)[name]["HealthCheckPath"] == f"{prefix}/health/ready"
    # The image's own check (compose) is liveness too.
    for target in SERVICES:
        check = " ".join(last_exec_form(dockerfile_stages()[target], "HEALTHCHECK"))
        assert "DEPOT_PREFIX'] + '/health'" in check, check


# 2. Keep-alive above the ALB's idle timeout, from one value


def uvicorn_options(target: str, task_environment: dict[str, str]) -> dict[str, Any]:
    """What uvicorn makes of the image's command with the image's and the task's environment (ECS's order)."""
    stage = dockerfile_stages()[target]
    command = last_exec_form(stage, "CMD")
    assert command[0] == "uvicorn", command
    env = image_environment(stage) | {name: v for name, v in task_environment.items() if isinstance(v, str)}
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("UVICORN_")]:
            patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        context = uvicorn_command.make_context("uvicorn", command[1:], auto_envvar_prefix="UVICORN")
    params: dict[str, Any] = context.params
    return params


@pytest.mark.parametrize("idle", [None, 120])
def test_uvicorn_keeps_connections_longer_than_the_load_balancer(template: Template, idle: int | None) -> None:
    if idle is not None:
        template = build({"alb_idle_timeout_seconds": idle})[1]
    expected_idle = idle or int(CDK_CONTEXT["alb_idle_timeout_seconds"])
    assert alb_attributes(template)["idle_timeout.timeout_seconds"] == str(expected_idle)
    for balancer in of_type(template, "AWS::ElasticLoadBalancingV2::LoadBalancer").values():
        idle_timeout = attributes(balancer["Properties"], "LoadBalancerAttributes").get("idle_timeout.timeout_seconds")
        assert int(idle_timeout or 60) < expected_idle + 5, "every load balancer in front closes first"
    for name in SERVICES:
        task_environment = environment(containers(template)[name])
        assert task_environment["UVICORN_TIMEOUT_KEEP_ALIVE"] == str(expected_idle + 5)
        # The image's command line names no keep-alive of its own: the task's value is the one used.
        options = uvicorn_options(name, task_environment)
        assert options["timeout_keep_alive"] == expected_idle + 5 > expected_idle


# 3. Stopping a task: drain, then a graceful shutdown within the stop timeout


def test_a_stopping_task_finishes_in_flight_requests_within_ecs_stop_timeout(template: Template) -> None:
    lifespan_bound = 2 * inspect.signature(Worker.stop).parameters["timeout"].default + SHUTDOWN_DRAIN_SECONDS
    assert lifespan_bound <= APP_SHUTDOWN_SECONDS, "the lifespan's queue workers and owned tasks fit"
    for name in SERVICES:
        container = containers(template)[name]
        assert container["StopTimeout"] == 120, "Fargate's maximum"
        graceful = int(environment(container)["UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN"])
        assert uvicorn_options(name, environment(container))["timeout_graceful_shutdown"] == graceful
        assert graceful + APP_SHUTDOWN_SECONDS < container["StopTimeout"], name
    drains = {name: int(attributes(tg, "TargetGroupAttributes")["deregistration_delay.timeout_seconds"])
              for name, tg in target_groups(template).items()}  # fmt: skip
    assert drains["package_service"] == 300, "streamed transfers may go on for 5 minutes"
    deadline = CommonSettings.model_fields["request_timeout_seconds"].default
    assert drains["auth_service"] == drains["validator_service"] == drains["web_service"] == 30 > deadline
    longer = target_groups(build({"transfer_drain_seconds": 900})[1])
    assert attributes(longer["package_service"], "TargetGroupAttributes")["deregistration_delay.timeout_seconds"] == (
        "900"
    )


# 4. No DesiredCount knock-back


def test_a_deploy_never_resets_the_task_count_autoscaling_chose(template: Template) -> None:
    services = of_type(template, "AWS::ECS::Service")
    assert len(services) == 4
    for service in services.values():
        assert "DesiredCount" not in service["Properties"], "CloudFormation would reset it on every deploy"
    minimums = sorted(
        t["Properties"]["MinCapacity"]
        for t in of_type(template, "AWS::ApplicationAutoScaling::ScalableTarget").values()
    )
    assert minimums == sorted(int(s["min_tasks"]) for s in CDK_CONTEXT["services"].values())
    paused = build({"paused": "true"})[1]
    for service in of_type(paused, "AWS::ECS::Service").values():
        assert service["Properties"]["DesiredCount"] == 0, "paused: no task runs before the migrations"
    for target in of_type(paused, "AWS::ApplicationAutoScaling::ScalableTarget").values():
        assert target["Properties"]["MinCapacity"] == 0


# 5. The validator: out on waiting jobs, in only when none is queued or running; protected while busy


def test_the_validator_scales_in_only_when_no_job_is_queued_or_running(template: Template) -> None:
    policies = of_type(template, "AWS::ApplicationAutoScaling::ScalingPolicy")
    step = {name: p["Properties"] for name, p in policies.items() if p["Properties"]["PolicyType"] == "StepScaling"}
    assert len(step) == 2
    by_alarm = {}
    for alarm in alarms(template).values():
        for action in alarm.get("AlarmActions", []):
            if isinstance(action, dict) and action.get("Ref") in step:
                by_alarm[action["Ref"]] = alarm
    assert len(by_alarm) == 2
    scale_in = next(a for ref, a in by_alarm.items() if "Idle" in ref)
    scale_out = next(a for ref, a in by_alarm.items() if "Backlog" in ref)
    (expression,) = [m for m in scale_in["Metrics"] if "Expression" in m]
    assert expression["Expression"] == "queued + running"
    assert metric_names(scale_in) == {"QueuedJobs", "RunningJobs"}
    assert (scale_in["ComparisonOperator"], scale_in["Threshold"]) == ("LessThanOrEqualToThreshold", 0)
    assert scale_in["EvaluationPeriods"] >= 5, "idle for minutes, not one sample"
    assert (scale_out["MetricName"], scale_out["ComparisonOperator"], scale_out["Threshold"]) == (
        "QueuedJobs", "GreaterThanOrEqualToThreshold", 5,
    )  # fmt: skip
    tracking = {
        name: p["Properties"]["TargetTrackingScalingPolicyConfiguration"]["DisableScaleIn"]
        for name, p in policies.items()
        if p["Properties"]["PolicyType"] == "TargetTrackingScaling"
    }
    assert len(tracking) == 8
    assert all(disabled == name.startswith("validatorservice") for name, disabled in tracking.items()), tracking


def test_only_the_validator_may_protect_its_tasks_from_scale_in(template: Template) -> None:
    assert {"ecs:UpdateTaskProtection", "ecs:GetTaskProtection"} <= set(
        role_actions(template, "validatorserviceTaskRole")
    )
    for other in ("authserviceTaskRole", "packageserviceTaskRole"):
        assert not [a for a in role_actions(template, other) if "TaskProtection" in a]
    (cluster,) = of_type(template, "AWS::ECS::Cluster")
    template.has_resource_properties("AWS::IAM::Policy", {"PolicyDocument": {"Statement": Match.array_with([
        {"Action": ["ecs:UpdateTaskProtection", "ecs:GetTaskProtection"], "Effect": "Allow",
         "Resource": {"Fn::Join": ["", Match.array_with([":task/", {"Ref": cluster}, "/*"])]}},
    ])}})  # fmt: skip


# 6. The database connection budget


def test_every_connection_the_services_may_open_fits_the_database_with_headroom(
    built: tuple[DepotStack, Template],
) -> None:
    stack, template = built
    # Counted from the template alone: pool + overflow + queue listeners, at max tasks, twice (a rollout).
    max_tasks = {}
    for target in of_type(template, "AWS::ApplicationAutoScaling::ScalableTarget").values():
        service_ref = target["Properties"]["ResourceId"]["Fn::Join"][1][-1]["Fn::GetAtt"][0]
        name = next(n for n in SERVICES if service_ref.startswith(n.replace("_", "")))
        max_tasks[name] = target["Properties"]["MaxCapacity"]
    planned = 0
    assert not {"DEPOT_DB_POOL_SIZE", "DEPOT_DB_MAX_OVERFLOW"} & set(environment(containers(template)["web_service"]))
    for name, listeners in LISTENERS.items():  # the services that connect to the database (not web_service)
        env = environment(containers(template)[name])
        per_task = int(env["DEPOT_DB_POOL_SIZE"]) + int(env["DEPOT_DB_MAX_OVERFLOW"]) + listeners
        planned += per_task * max_tasks[name] * 2
    migrate = environment(containers(template)["migrate"])
    planned += int(migrate["DEPOT_DB_POOL_SIZE"]) + int(migrate["DEPOT_DB_MAX_OVERFLOW"])
    # RDS's default for db.t4g.medium: LEAST(DBInstanceClassMemory / 9531392, 5000), ~417 (4 GiB less what RDS keeps).
    assert CDK_CONTEXT["db_instance_type"] == "t4g.medium"
    assert 400 <= estimated_max_connections("t4g.medium") <= 4 * 1024**3 // 9531392
    usable = int((estimated_max_connections("t4g.medium") - 5) * 0.8)
    assert planned <= usable, (planned, usable)
    assert stack.connection_budget.total == planned
    (alarm,) = [a for a in alarms(template).values() if a.get("MetricName") == "DatabaseConnections"]
    assert alarm["Threshold"] == usable
    assert alarm["AlarmActions"]


def test_a_plan_over_the_budget_fails_the_synth() -> None:
    with pytest.raises(ValueError, match=r"over budget: \d+ planned .* t4g\.micro accepts 79 "):
        build({"db_instance_type": "t4g.micro"})
    with pytest.raises(ValueError, match="db_max_connections"):
        build({"db_instance_type": "x9z.huge"})
    stack, _ = build({"db_instance_type": "x9z.huge", "db_max_connections": 1000})
    assert stack.connection_budget.usable == int((1000 - 5) * 0.8)
    bigger_pool = {**CDK_CONTEXT["services"]["package_service"], "db_pool_size": 12}
    with pytest.raises(ValueError, match="over budget"):
        build({"services": {**CDK_CONTEXT["services"], "package_service": bigger_pool}})
    config = DeployConfig.from_context(cdk.App(context=CDK_CONTEXT).node)
    assert connection_budget(config).planned["package_service"] == (7 + 3 + 1) * 8 * 2


# 7. Alarms someone receives


def test_alarms_reach_a_topic_and_an_address_or_the_synth_says_so() -> None:
    stack, template = build()
    template.resource_count_is("AWS::SNS::Topic", 1)
    template.resource_count_is("AWS::SNS::Subscription", 0)
    Annotations.from_stack(stack).has_warning("/Depot", Match.string_like_regexp("no alarm_email"))
    with pytest.raises(ValueError, match="Production needs alarm_email"):
        build({"environment": "production", "allow_insecure_http": "true"})
    stack, template = build(
        {"environment": "production", "allow_insecure_http": "true", "alarm_email": "ops@example.com"}
    )
    template.has_resource_properties("AWS::SNS::Subscription", {"Protocol": "email", "Endpoint": "ops@example.com"})
    Annotations.from_stack(stack).has_no_warning("/Depot", Match.string_like_regexp("no alarm_email"))
    build(
        {"environment": "production", "allow_insecure_http": "true", "allow_no_alarm_email": "true"}
    )  # subscribed otherwise


def test_a_silent_validator_raises_the_queue_alarms(template: Template) -> None:
    (topic,) = of_type(template, "AWS::SNS::Topic")
    queue_alarms = {n: a for n, a in alarms(template).items()
                    if a.get("Namespace") == "Depot" and {"Ref": topic} in a["AlarmActions"]}  # fmt: skip
    assert {next(iter(metric_names(a))) for a in queue_alarms.values()} == {"DeadJobs", "QueuedJobs"}
    assert len(queue_alarms) == 3, "dead jobs in each queue, and a validation backlog"
    for alarm in queue_alarms.values():
        assert alarm["TreatMissingData"] == "breaching", "no metrics means no validator"
        assert alarm["Period"] * alarm["EvaluationPeriods"] >= 300, "a late data point is not an outage"
        assert alarm["ActionsEnabled"] is True
    paused = alarms(build({"paused": "true"})[1])
    assert all(a["ActionsEnabled"] is False for a in paused.values() if a.get("TreatMissingData") == "breaching")


def test_large_transfers_do_not_trip_the_latency_alarm(template: Template) -> None:
    by_metric: dict[str, list[dict[str, Any]]] = {}
    for alarm in alarms(template).values():
        for metric in metric_names(alarm):
            by_metric.setdefault(metric, []).append(alarm)
    alb_latency = {
        json.dumps(next(d["Value"] for d in a["Dimensions"] if d["Name"] == "TargetGroup"))
        for a in by_metric["TargetResponseTime"]
    }
    assert len(alb_latency) == 3
    assert not [g for g in alb_latency if "packageservice" in g], "the ALB's time counts an upload's whole body"
    (own,) = by_metric["RequestLatency"]
    (stat,) = own["Metrics"]
    assert stat["MetricStat"]["Metric"]["Dimensions"] == [{"Name": "Service", "Value": "package_service"}]
    assert (stat["MetricStat"]["Stat"], own["Threshold"]) == ("p99", 2000)
    filters = of_type(template, "AWS::Logs::MetricFilter")
    assert len(filters) == 4, "one per service log group"
    for metric_filter in filters.values():
        pattern = metric_filter["Properties"]["FilterPattern"]
        # The access line (common.middleware) of a request that moved no artifact bytes.
        assert pattern == (
            '{ ($.logger = "depot.access") && ($.event = "request") && ($.transfer IS FALSE) && ($.duration_ms = "*") }'
        )
        (transformation,) = metric_filter["Properties"]["MetricTransformations"]
        assert transformation == {"MetricNamespace": "Depot", "MetricName": "RequestLatency",
                                  "MetricValue": "$.duration_ms", "Unit": "Milliseconds",
                                  "Dimensions": [{"Key": "Service", "Value": "$.service"}]}  # fmt: skip


# 8. Access logs, dashboard, ECS Exec, a saved query


def test_the_load_balancer_logs_every_request_to_a_private_expiring_bucket(template: Template) -> None:
    attrs = alb_attributes(template)
    assert attrs["access_logs.s3.enabled"] == "true"
    assert attrs["access_logs.s3.prefix"] == "alb"
    bucket_ref = attrs["access_logs.s3.bucket"]["Ref"]
    bucket = of_type(template, "AWS::S3::Bucket")[bucket_ref]
    properties = bucket["Properties"]
    assert bucket["DeletionPolicy"] == "Retain"
    (encryption,) = properties["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert encryption["ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "AES256"}, "ALB logs take SSE-S3 only"
    assert set(properties["PublicAccessBlockConfiguration"].values()) == {True}
    (rule,) = properties["LifecycleConfiguration"]["Rules"]
    assert (rule["ExpirationInDays"], rule["Status"]) == (90, "Enabled")
    (policy,) = [p for p in of_type(template, "AWS::S3::BucketPolicy").values()
                 if p["Properties"]["Bucket"] == {"Ref": bucket_ref}]  # fmt: skip
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    assert any(
        s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} for s in statements
    )
    (write,) = [s for s in statements if s["Effect"] == "Allow"]
    assert write["Action"] == "s3:PutObject"
    assert write["Principal"]["Service"] == "logdelivery.elasticloadbalancing.amazonaws.com"
    assert "Elbv2AccountMap" in json.dumps(write["Principal"]["AWS"]), "older regions: their ELB account"
    balancer = public_alb(template)
    assert policy_name(template, bucket_ref) in balancer["DependsOn"], "the policy exists before logging starts"
    # With a region known (as `make deploy` synthesizes), its ELB account is written out.
    regional = build(env=cdk.Environment(account="111111111111", region="eu-west-1"))[1]
    assert ':iam::156460612806:root"' in json.dumps(regional.find_resources("AWS::S3::BucketPolicy"))


def policy_name(template: Template, bucket_ref: str) -> str:
    return next(name for name, p in of_type(template, "AWS::S3::BucketPolicy").items()
                if p["Properties"]["Bucket"] == {"Ref": bucket_ref})  # fmt: skip


def test_one_dashboard_shows_traffic_errors_latency_queues_connections_cpu_and_memory(template: Template) -> None:
    (dashboard,) = of_type(template, "AWS::CloudWatch::Dashboard").values()
    body = json.dumps(dashboard["Properties"]["DashboardBody"])
    for metric in ("RequestCount", "HTTPCode_Target_5XX_Count", "HTTPCode_ELB_5XX_Count", "RequestLatency",
                   "TargetResponseTime", "QueuedJobs", "RunningJobs", "DeadJobs", "DatabaseConnections",
                   "CPUUtilization", "MemoryUtilization"):  # fmt: skip
        assert metric in body, metric
    for name in SERVICES:
        assert body.count(f'\\"{name}\\"') >= 4, f"{name} on every per-service graph"
    assert '\\"value\\":329' in body, "the connection budget drawn on the connections graph"


def test_ecs_exec_works_with_a_read_only_root_file_system(template: Template) -> None:
    for service in of_type(template, "AWS::ECS::Service").values():
        assert service["Properties"]["EnableExecuteCommand"] is True
    for name in SERVICES:
        container = containers(template)[name]
        assert container["ReadonlyRootFilesystem"] is True
        mounted = {m["ContainerPath"] for m in container["MountPoints"] if m["ReadOnly"] is False}
        assert {"/var/lib/amazon", "/var/log/amazon"} <= mounted, "where the SSM agent writes"
        actions = role_actions(template, f"{name.replace('_', '')}TaskRole")
        assert {"ssmmessages:CreateControlChannel", "ssmmessages:OpenDataChannel"} <= set(actions)
        assert not [a for a in actions if a.startswith("logs:")], "sessions are not logged: no log writes"
    (cluster,) = of_type(template, "AWS::ECS::Cluster").values()
    assert cluster["Properties"]["Configuration"]["ExecuteCommandConfiguration"] == {"Logging": "NONE"}
    without = build({"ecs_exec": "false"})[1]
    for service in of_type(without, "AWS::ECS::Service").values():
        assert not service["Properties"].get("EnableExecuteCommand")
    assert not [a for a in role_actions(without, "authserviceTaskRole") if a.startswith("ssmmessages:")]


def test_a_saved_query_follows_one_request_across_the_three_log_groups(template: Template) -> None:
    (query,) = of_type(template, "AWS::Logs::QueryDefinition").values()
    groups = {ref["Ref"] for ref in query["Properties"]["LogGroupNames"]}
    names = {name: g["Properties"]["LogGroupName"] for name, g in of_type(template, "AWS::Logs::LogGroup").items()}
    assert sorted(names[g] for g in groups) == sorted(f"/depot/Depot/{name}" for name in SERVICES)
    text = query["Properties"]["QueryString"]
    assert re.search(r'filter request_id = "[^"]+"', text), text
    assert "sort @timestamp asc" in text
    for field in ("service", "event", "status", "duration_ms"):
        assert field in text


def test_new_context_values_are_documented() -> None:
    documented = (ROOT / "deploy" / "app.py").read_text()
    for name in ("transfer_drain_seconds", "db_max_connections", "allow_no_alarm_email", "access_log_retention_days",
                 "ecs_exec", "db_pool_size", "db_max_overflow"):  # fmt: skip
        assert f"`{name}`" in documented, name
    for name in ("transfer_drain_seconds", "access_log_retention_days", "ecs_exec"):
        assert name in CDK_CONTEXT, name
