"""web_service on AWS: the fourth Fargate service, the public balancer's default action (issue 16).

It holds no data: no database secret, URL or pool, and no place in the connection budget. It calls
the three APIs on the internal balancer's own listener, reachable from its security group only.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from aws_cdk import App
from aws_cdk.assertions import Template

from tests.deploy.test_stack import ROOT, synthesize, synthesize_both
from web_service.sessions import Session, SessionCookies
from web_service.settings import WebSettings

sys.path.insert(0, str(ROOT / "deploy"))

from depot_stack import WEB_API_PORT, DeployConfig, connection_budget

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def both() -> tuple[Template, Template]:
    return synthesize_both({"image_tag": "abc1234"})


@pytest.fixture(scope="module")
def template(both: tuple[Template, Template]) -> Template:
    return both[1]


def of_type(template: Template, kind: str) -> dict[str, Any]:
    return dict(template.find_resources(kind))


def web_container(template: Template) -> dict[str, Any]:
    (container,) = [
        d["Properties"]["ContainerDefinitions"][0] for d in of_type(template, "AWS::ECS::TaskDefinition").values()
        if d["Properties"]["ContainerDefinitions"][0]["Name"] == "web_service"
    ]  # fmt: skip
    return dict(container)


def web_target_group(template: Template) -> str:
    (name,) = [n for n in of_type(template, "AWS::ElasticLoadBalancingV2::TargetGroup") if n.startswith("LoadBalancer")
               and "webservice" in n]  # fmt: skip
    return name


def test_web_service_runs_its_image_from_its_repository(both: tuple[Template, Template]) -> None:
    base, template = both
    base.has_resource_properties("AWS::ECR::Repository", {"RepositoryName": "depot/web-service"})
    assert "WebServiceRepositoryUri" in base.find_outputs("*")
    container = web_container(template)
    image = json.dumps(container["Image"])
    assert ":abc1234" in image
    assert "webserviceRepository" in image
    task = next(d["Properties"] for d in of_type(template, "AWS::ECS::TaskDefinition").values()
                if d["Properties"]["ContainerDefinitions"][0]["Name"] == "web_service")  # fmt: skip
    assert (task["Cpu"], task["Memory"]) == ("256", "512")
    assert "127.0.0.1:8000/health'" in " ".join(container["HealthCheck"]["Command"]), "liveness, unprefixed"
    assert "WebServiceServiceName" in template.find_outputs("*")


def test_the_default_action_forwards_to_web_service_and_metrics_still_404(template: Template) -> None:
    group = web_target_group(template)
    groups = of_type(template, "AWS::ElasticLoadBalancingV2::TargetGroup")
    assert groups[group]["Properties"]["HealthCheckPath"] == "/health/ready"
    (listener,) = [lb["Properties"] for n, lb in of_type(template, "AWS::ElasticLoadBalancingV2::Listener").items()
                   if n.startswith("LoadBalancer")]  # fmt: skip
    assert listener["DefaultActions"] == [{"Type": "forward", "TargetGroupArn": {"Ref": group}}]
    rules = [r["Properties"] for r in of_type(template, "AWS::ElasticLoadBalancingV2::ListenerRule").values()
             if r["Properties"]["ListenerArn"]["Ref"].startswith("LoadBalancer")]  # fmt: skip
    (metrics,) = [r for r in rules if r["Priority"] == 5]
    assert metrics["Actions"][0]["FixedResponseConfig"]["StatusCode"] == "404"
    assert metrics["Conditions"][0]["PathPatternConfig"]["Values"] == [
        "/auth/metrics", "/packages/metrics", "/validate/metrics", "/metrics",
    ], "web_service's own /metrics too"  # fmt: skip
    assert all(r["Priority"] > 5 for r in rules if r is not metrics), "the metrics rule wins"


def test_with_a_certificate_https_forwards_to_web_service_and_http_only_redirects() -> None:
    template = synthesize({"certificate_arn": "arn:aws:acm:eu-west-1:111111111111:certificate/x",
                           "public_url": "https://depot.example.com"})  # fmt: skip
    found = of_type(template, "AWS::ElasticLoadBalancingV2::Listener")
    listeners = {lb["Properties"]["Port"]: lb["Properties"] for n, lb in found.items() if n.startswith("LoadBalancer")}
    assert listeners[443]["DefaultActions"] == [
        {"Type": "forward", "TargetGroupArn": {"Ref": web_target_group(template)}}
    ]
    assert listeners[80]["DefaultActions"][0]["Type"] == "redirect"
    environment = {v["Name"]: v["Value"] for v in web_container(template)["Environment"]}
    assert environment["DEPOT_PUBLIC_URL"] == "https://depot.example.com", "https: its cookies are Secure"


def test_web_service_has_no_database_secret_and_its_session_key_comes_from_a_generated_secret(
    both: tuple[Template, Template],
) -> None:
    base, template = both
    container = web_container(template)
    secrets = {s["Name"]: s["ValueFrom"] for s in container["Secrets"]}
    assert list(secrets) == ["DEPOT_SESSION_KEY"]
    assert "SessionKey" in json.dumps(secrets["DEPOT_SESSION_KEY"])
    (session_key,) = [r["Properties"] for n, r in of_type(base, "AWS::SecretsManager::Secret").items()
                      if n.startswith("SessionKey")]  # fmt: skip
    generated = session_key["GenerateSecretString"]
    assert generated["PasswordLength"] >= 32, "web_service's settings require 32 characters at least"
    environment = {v["Name"]: v["Value"] for v in container["Environment"]}
    assert not [n for n in environment if "DATABASE" in n or n.startswith(("DEPOT_DB_", "DEPOT_S3_"))], environment
    assert environment["DEPOT_ENVIRONMENT"] == "production"
    api_url = json.dumps(environment["DEPOT_API_URL"])
    assert "InternalLoadBalancer" in api_url
    assert f":{WEB_API_PORT}" in api_url


def test_the_session_key_format_cloudformation_generates_is_accepted() -> None:
    key = "A1b2" * 16  # 64 alphanumeric characters, like GenerateSecretString's
    settings = WebSettings(environment="production", api_url="http://internal:8080", session_key=key)
    assert settings.session_key is not None
    cookies = SessionCookies(settings.session_key.get_secret_value(), secure=True)
    session, known = cookies.open(cookies.seal(Session(username="sam")))
    assert known
    assert session.username == "sam"


def test_web_service_reaches_all_api_routes_on_its_own_internal_listener(template: Template) -> None:
    listeners = of_type(template, "AWS::ElasticLoadBalancingV2::Listener")
    (web_listener,) = [n for n, lb in listeners.items() if lb["Properties"]["Port"] == WEB_API_PORT]
    rules = [r["Properties"] for r in of_type(template, "AWS::ElasticLoadBalancingV2::ListenerRule").values()
             if r["Properties"]["ListenerArn"] == {"Ref": web_listener}]  # fmt: skip
    routed = sorted((r["Priority"], r["Conditions"][0]["PathPatternConfig"]["Values"]) for r in rules)
    assert routed == [(5, ["/auth/metrics", "/packages/metrics", "/validate/metrics", "/metrics"]),
                      (10, ["/auth*"]), (20, ["/packages*"]), (30, ["/validate*"])]  # fmt: skip
    # Only web_service's group reaches that port; it is not in the tasks' group that reaches the database.
    groups = of_type(template, "AWS::EC2::SecurityGroup")
    (web_sg,) = [n for n in groups if n.startswith("WebSecurityGroup")]
    (tasks_sg,) = [n for n in groups if n.startswith("TasksSecurityGroup")]
    (service,) = [s for n, s in of_type(template, "AWS::ECS::Service").items() if n.startswith("webservice")]
    attached = service["Properties"]["NetworkConfiguration"]["AwsvpcConfiguration"]["SecurityGroups"]
    assert [json.dumps(g) for g in attached] == [json.dumps({"Fn::GetAtt": [web_sg, "GroupId"]})]
    assert tasks_sg not in json.dumps(attached)
    assert "CidrIp" not in json.dumps(groups[web_sg]["Properties"].get("SecurityGroupIngress", []))


def test_web_service_scales_and_raises_alarms_like_auth(template: Template) -> None:
    (target,) = [t["Properties"] for n, t in of_type(template, "AWS::ApplicationAutoScaling::ScalableTarget").items()
                 if n.startswith("webservice")]  # fmt: skip
    assert (target["MinCapacity"], target["MaxCapacity"]) == (2, 4)
    policies = [n for n, p in of_type(template, "AWS::ApplicationAutoScaling::ScalingPolicy").items()
                if n.startswith("webservice")]  # fmt: skip
    assert len(policies) == 2, "CPU and requests per target"
    alarms = {n for n in of_type(template, "AWS::CloudWatch::Alarm") if n.startswith("webservice")}
    for kind in ("Target5xx", "ResponseTime", "Unhealthy", "Cpu", "Memory"):
        assert any(n.startswith(f"webservice{kind}") for n in alarms), (kind, alarms)


def test_web_service_does_not_count_in_the_database_budget() -> None:
    context = json.loads((ROOT / "deploy" / "cdk.json").read_text())["context"]
    budget = connection_budget(DeployConfig.from_context(App(context=context).node))
    assert "web_service" not in budget.planned
