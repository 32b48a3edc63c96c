"""Secure by default (issue 17), on the synthesized templates: HTTPS, registration and the first admin,
the network (S3 endpoint, NAT per AZ, an internal path between services), a versioned bucket,
one database role per service, and TLS to the database that checks the RDS certificate."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")

import aws_cdk as cdk
from aws_cdk.assertions import Template

from common.database_roles import SERVICE_ROLES
from common.migrations import MigrationSettings

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy"))

from depot_stack import (  # noqa: E402
    DATABASE_ROLES,
    INTERNAL_ROUTES,
    RDS_CA_BUNDLE,
    DeployConfig,
    DepotBaseStack,
    DepotStack,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CERTIFICATE = {"certificate_arn": "arn:aws:acm:eu-west-1:111111111111:certificate/x",
               "public_url": "https://depot.example.com"}  # fmt: skip
SERVICES = ("auth_service", "package_service", "validator_service")
ALARMED = {"alarm_email": "ops@example.com"}  # production requires someone to receive the alarms


@dataclass
class Synthesized:
    base: Template
    template: Template
    stack: DepotStack

    @property
    def resources(self) -> dict[str, Any]:
        found: dict[str, Any] = self.template.to_json()["Resources"]
        return found

    def of_type(self, kind: str) -> dict[str, Any]:
        return {name: r for name, r in self.resources.items() if r["Type"] == kind}

    def container(self, name: str) -> dict[str, Any]:
        for definition in self.of_type("AWS::ECS::TaskDefinition").values():
            container: dict[str, Any] = definition["Properties"]["ContainerDefinitions"][0]
            if container["Name"] == name:
                return container
        raise AssertionError(f"no container {name}")

    def environment(self, name: str) -> dict[str, Any]:
        return {variable["Name"]: variable["Value"] for variable in self.container(name).get("Environment", [])}

    def secrets(self, name: str) -> dict[str, Any]:
        return {secret["Name"]: secret["ValueFrom"] for secret in self.container(name).get("Secrets", [])}

    def warnings(self, pattern: str) -> list[str]:
        """The stack's warnings that match `pattern`, read from the cloud assembly's manifest: plain JSON.
        (Read back through jsii, as `Annotations.find_warning` does, they need the lazily imported
        module of `MetadataEntry`, which a new environment may not have loaded: "Unknown interface".)"""
        assembly = Path(cdk.Stage.of(self.stack).synth().directory)
        artifact = json.loads((assembly / "manifest.json").read_text())["artifacts"][self.stack.artifact_id]
        metadata = artifact.get("metadata") or json.loads((assembly / artifact["additionalMetadataFile"]).read_text())
        entries = metadata.values()
        return [
            str(entry["data"]) for path in entries for entry in path
            if entry["type"] == "aws:cdk:warning" and re.search(pattern, str(entry["data"]))
        ]  # fmt: skip


def synthesize(context: dict[str, Any] | None = None) -> Synthesized:
    app = cdk.App(context={**json.loads((ROOT / "deploy" / "cdk.json").read_text())["context"], **(context or {})})
    base = DepotBaseStack(app, "DepotBase")
    stack = DepotStack(app, "Depot", config=DeployConfig.from_context(app.node), base=base)
    return Synthesized(Template.from_stack(base), Template.from_stack(stack), stack)


@pytest.fixture(scope="module")
def staging() -> Synthesized:
    return synthesize()


@pytest.fixture(scope="module")
def production() -> Synthesized:
    return synthesize({"environment": "production", **CERTIFICATE, **ALARMED})


def ref(value: Any) -> str:
    """The logical id a `Ref`, `Fn::GetAtt` or `secret:key::` join points at."""
    if isinstance(value, dict):
        if "Ref" in value:
            return str(value["Ref"])
        if "Fn::GetAtt" in value:
            return str(value["Fn::GetAtt"][0])
        if "Fn::Join" in value:
            return next(ref(part) for part in value["Fn::Join"][1] if isinstance(part, dict))
        if "Fn::ImportValue" in value:
            return str(value["Fn::ImportValue"])
    raise AssertionError(f"not a reference: {value}")


def joined(value: Any) -> list[Any]:
    assert isinstance(value, dict)
    assert "Fn::Join" in value, value
    parts: list[Any] = value["Fn::Join"][1]
    return parts


# 1. HTTPS by default


def test_production_without_a_certificate_does_not_synthesize_unless_insecure_http_is_asked_for() -> None:
    with pytest.raises(ValueError, match=r"production needs HTTPS.*certificate_arn.*allow_insecure_http=true"):
        synthesize({"environment": "production"})
    knowingly = synthesize({"environment": "production", "allow_insecure_http": "true", **ALARMED})
    assert knowingly.warnings("NO HTTPS"), "still said loudly"


def test_staging_without_a_certificate_warns_and_opens_only_port_80(staging: Synthesized) -> None:
    assert staging.warnings("NO HTTPS.*certificate_arn")
    (group,) = [g for name, g in staging.of_type("AWS::EC2::SecurityGroup").items() if name.startswith("AlbSecurity")]
    assert [rule["FromPort"] for rule in group["Properties"]["SecurityGroupIngress"]] == [80]


def test_with_a_certificate_port_80_only_redirects_to_tls_with_a_recent_policy(production: Synthesized) -> None:
    assert not production.warnings("NO HTTPS")
    listeners = {
        props["Port"]: (name, props)
        for name, listener in production.of_type("AWS::ElasticLoadBalancingV2::Listener").items()
        if not name.startswith("Internal")
        for props in [listener["Properties"]]
    }
    assert sorted(listeners) == [80, 443]
    https = listeners[443][1]
    assert https["Protocol"] == "HTTPS"
    assert https["SslPolicy"] == "ELBSecurityPolicy-TLS13-1-2-2021-06", "TLS 1.2 and 1.3 with forward secrecy only"
    assert {"Key": "routing.http.response.strict_transport_security.header_value", "Value": "max-age=31536000"} in (
        https["ListenerAttributes"]
    )
    name80, http = listeners[80]
    assert http["DefaultActions"] == [
        {"Type": "redirect", "RedirectConfig": {"Port": "443", "Protocol": "HTTPS", "StatusCode": "HTTP_301"}}
    ]
    rules = production.of_type("AWS::ElasticLoadBalancingV2::ListenerRule").values()
    assert not [rule for rule in rules if ref(rule["Properties"]["ListenerArn"]) == name80], "nothing forwarded on 80"
    (group,) = [g for n, g in production.of_type("AWS::EC2::SecurityGroup").items() if n.startswith("AlbSecurity")]
    assert sorted(rule["FromPort"] for rule in group["Properties"]["SecurityGroupIngress"]) == [80, 443]
    production.template.has_output("LoadBalancerUrl", {"Value": "https://depot.example.com"})


# 2. Registration closed, and the first admin


def test_registration_is_closed_on_aws_and_an_operator_may_open_it(staging: Synthesized) -> None:
    assert staging.environment("auth_service")["DEPOT_REGISTRATION_OPEN"] == "false"
    opened = synthesize({"registration_open": "true"})
    assert opened.environment("auth_service")["DEPOT_REGISTRATION_OPEN"] == "true"


def test_the_first_admin_gets_a_password_cloudformation_generates(staging: Synthesized) -> None:
    secrets = staging.base.find_resources("AWS::SecretsManager::Secret")
    (admin_id,) = [name for name in secrets if name.startswith("AdminPassword")]
    generated = secrets[admin_id]["Properties"]["GenerateSecretString"]
    assert generated["PasswordLength"] >= 32
    assert generated["ExcludePunctuation"] is True, "a password that any shell and form take as it is"
    staging.base.has_resource("AWS::SecretsManager::Secret", {"DeletionPolicy": "Retain"})
    staging.base.has_output("AdminPasswordSecret", {"Value": {"Ref": admin_id}})
    assert staging.environment("auth_service")["DEPOT_ADMIN_USERNAME"] == "admin"
    assert admin_id in ref(staging.secrets("auth_service")["DEPOT_ADMIN_PASSWORD"])
    for other in ("package_service", "validator_service", "migrate"):
        assert "DEPOT_ADMIN_PASSWORD" not in staging.secrets(other), other


# 3. S3 without NAT, NAT per AZ in production


def test_s3_traffic_takes_a_gateway_endpoint_from_the_tasks_subnets(staging: Synthesized) -> None:
    (endpoint,) = staging.of_type("AWS::EC2::VPCEndpoint").values()
    properties = endpoint["Properties"]
    assert properties["VpcEndpointType"] == "Gateway"
    assert joined(properties["ServiceName"])[-1] == ".s3"
    task_subnets = {
        ref(subnet)
        for service in staging.of_type("AWS::ECS::Service").values()
        for subnet in service["Properties"]["NetworkConfiguration"]["AwsvpcConfiguration"]["Subnets"]
    }
    routes_of_task_subnets = {
        ref(association["Properties"]["RouteTableId"])
        for association in staging.of_type("AWS::EC2::SubnetRouteTableAssociation").values()
        if ref(association["Properties"]["SubnetId"]) in task_subnets
    }
    assert {ref(table) for table in properties["RouteTableIds"]} == routes_of_task_subnets
    assert len(routes_of_task_subnets) == 2


def test_production_has_a_nat_gateway_per_az_and_staging_shares_one(
    staging: Synthesized, production: Synthesized
) -> None:
    assert "nat_gateways" not in json.loads((ROOT / "deploy" / "cdk.json").read_text())["context"]
    assert len(staging.of_type("AWS::EC2::NatGateway")) == 1
    assert len(production.of_type("AWS::EC2::NatGateway")) == 2
    assert not production.warnings("NAT gateway")
    thrifty = synthesize({"environment": "production", **CERTIFICATE, **ALARMED, "nat_gateways": 1})
    assert len(thrifty.of_type("AWS::EC2::NatGateway")) == 1
    assert thrifty.warnings("production with 1 NAT gateway"), "allowed when asked for, with a warning"


# 4. Services call each other inside the VPC


def test_services_call_each_other_through_an_internal_load_balancer(production: Synthesized) -> None:
    balancers = production.of_type("AWS::ElasticLoadBalancingV2::LoadBalancer")
    (internal_id,) = [name for name, lb in balancers.items() if lb["Properties"]["Scheme"] == "internal"]
    (public_id,) = [name for name, lb in balancers.items() if lb["Properties"]["Scheme"] == "internet-facing"]
    expected = {
        "package_service": {"DEPOT_AUTH_JWKS_URL": "/auth/.well-known/jwks.json", "DEPOT_AUTH_URL": None},
        "validator_service": {
            "DEPOT_AUTH_JWKS_URL": "/auth/.well-known/jwks.json", "DEPOT_AUTH_URL": None, "DEPOT_PACKAGES_URL": None,
        },
    }  # fmt: skip
    for service, variables in expected.items():
        environment = production.environment(service)
        for variable, path in variables.items():
            parts = joined(environment[variable])
            assert parts[0] == "http://", "plain HTTP inside the VPC, to the internal balancer"
            assert ref(parts[1]) == internal_id, (service, variable)
            assert parts[2:] == ([path] if path else [])
    for name in (*SERVICES, "migrate"):
        assert public_id not in json.dumps(production.container(name)), f"{name} never calls the public ALB"


def alb_matches(pattern: str, path: str) -> bool:
    # An ALB path pattern: `*` any characters (slashes too), `?` one; case-sensitive.
    return fnmatch.fnmatchcase(path, pattern)


def test_the_internal_balancer_routes_only_what_services_call(production: Synthesized) -> None:
    listeners = production.of_type("AWS::ElasticLoadBalancingV2::Listener")
    (internal_listener,) = [
        name for name, listener in listeners.items()
        if name.startswith("InternalLoadBalancer") and listener["Properties"]["Port"] == 80
    ]  # fmt: skip
    assert listeners[internal_listener]["Properties"]["Protocol"] == "HTTP"
    rules = [
        rule["Properties"] for rule in production.of_type("AWS::ElasticLoadBalancingV2::ListenerRule").values()
        if ref(rule["Properties"]["ListenerArn"]) == internal_listener
    ]  # fmt: skip
    patterns = sorted(p for rule in rules for p in rule["Conditions"][0]["PathPatternConfig"]["Values"])
    assert patterns == sorted(p for paths in INTERNAL_ROUTES.values() for p in paths)
    # What the services' clients request (validator_service/upstream.py, packages.py, users.py;
    # package_service/users.py; the JWKS fetch of common/auth.py) is routed ...
    for called in ("/auth/.well-known/jwks.json", "/auth/token", "/auth/users/sam", "/auth/users/a%2Fb",
                   "/packages/my-model/access", "/packages/My%20Model/access"):  # fmt: skip
        assert any(alb_matches(p, called) for p in patterns), called
    # ... and nothing a client would use the public balancer for.
    for public_only in ("/auth/login", "/auth/register", "/auth/users", "/packages", "/packages/m/versions/1/content",
                        "/validate", "/auth/metrics", "/packages/metrics", "/auth/health/ready"):  # fmt: skip
        assert not any(alb_matches(p, public_only) for p in patterns), public_only


def test_only_the_calling_services_reach_the_internal_balancer(production: Synthesized) -> None:
    groups = production.of_type("AWS::EC2::SecurityGroup")
    (callers_id,) = [name for name in groups if name.startswith("InternalCallersSecurityGroup")]
    (internal_sg,) = [name for name in groups if name.startswith("InternalAlbSecurityGroup")]
    services = production.of_type("AWS::ECS::Service")
    for name, service in services.items():
        attached = {
            ref(g) for g in service["Properties"]["NetworkConfiguration"]["AwsvpcConfiguration"]["SecurityGroups"]
        }
        calls = not name.startswith(("authservice", "webservice"))  # web_service: its own listener and group
        assert (callers_id in attached) == calls, name
    ingress = [
        rule["Properties"] for rule in production.of_type("AWS::EC2::SecurityGroupIngress").values()
        if ref(rule["Properties"]["GroupId"]) == internal_sg
    ]  # fmt: skip
    (web_id,) = [name for name in groups if name.startswith("WebSecurityGroup")]
    assert sorted((ref(r["SourceSecurityGroupId"]), r["FromPort"], r["ToPort"]) for r in ingress) == sorted(
        [(callers_id, 80, 80), (web_id, 8080, 8080)]
    )
    assert "SecurityGroupIngress" not in groups[internal_sg]["Properties"], "no CIDR open to it"
    assert "SecurityGroupEgress" not in groups[internal_sg]["Properties"], "egress only by the rules to the tasks"


# 5. A versioned bucket


def test_the_bucket_keeps_versions_for_a_while_and_package_service_cannot_remove_them(
    staging: Synthesized,
) -> None:
    (bucket,) = [b for name, b in staging.of_type("AWS::S3::Bucket").items() if name.startswith("Artifacts")]
    properties = bucket["Properties"]
    assert properties["VersioningConfiguration"] == {"Status": "Enabled"}
    rules = {rule["Id"]: rule for rule in properties["LifecycleConfiguration"]["Rules"]}
    assert rules["expire-noncurrent-versions"]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 30}
    assert rules["expire-noncurrent-versions"]["ExpiredObjectDeleteMarker"] is True
    assert rules["abort-incomplete-multipart-uploads"]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 3}
    week = synthesize({"noncurrent_version_expiration_days": 7})
    (bucket,) = [b for name, b in week.of_type("AWS::S3::Bucket").items() if name.startswith("Artifacts")]
    assert {"NoncurrentDays": 7} in [
        rule.get("NoncurrentVersionExpiration") for rule in bucket["Properties"]["LifecycleConfiguration"]["Rules"]
    ]
    denied = [
        statement
        for policy in staging.of_type("AWS::IAM::Policy").values()
        if any(ref(role).startswith("packageserviceTaskRole") for role in policy["Properties"]["Roles"])
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        if statement["Effect"] == "Deny"
    ]
    assert denied
    assert "s3:DeleteObjectVersion" in denied[0]["Action"]
    with pytest.raises(ValueError, match="noncurrent_version_expiration_days"):
        synthesize({"noncurrent_version_expiration_days": 0})


# 6. One database role per service


def test_each_service_connects_as_its_own_role_and_only_the_migration_task_has_the_master_secret(
    production: Synthesized,
) -> None:
    assert {role.service: role.name for role in SERVICE_ROLES} == DATABASE_ROLES, "the stack and the migrations agree"
    secrets = production.of_type("AWS::SecretsManager::Secret")
    master = production.secrets("migrate")["DEPOT_DATABASE_PASSWORD"]
    master_id = ref(master)
    for service, role in DATABASE_ROLES.items():
        (secret_id,) = [
            name for name, secret in secrets.items()
            if json.loads(secret["Properties"]["GenerateSecretString"]["SecretStringTemplate"]) == {"username": role}
        ]  # fmt: skip
        password = production.secrets(service)["DEPOT_DATABASE_PASSWORD"]
        assert ref(password) == secret_id, service
        assert joined(password)[1] == ":password::"
        assert joined(production.environment(service)["DEPOT_DATABASE_URL"])[0] == f"postgresql://{role}@"
        assert master_id not in json.dumps(production.container(service)), f"{service} never sees the master secret"
        # The migration task sets the role's password from the same secret.
        assert ref(production.secrets("migrate")[f"DEPOT_{service.upper()}_DATABASE_PASSWORD"]) == secret_id
    assert joined(production.environment("migrate")["DEPOT_DATABASE_URL"])[0] == "postgresql://depot@"


def test_the_migration_task_s_variables_are_the_ones_the_migrations_read(
    production: Synthesized, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [name for name in production.secrets("migrate") if name.endswith("_SERVICE_DATABASE_PASSWORD")]
    for name in names:
        monkeypatch.setenv(name, f"password of {name}")
    passwords = MigrationSettings().service_role_passwords
    assert passwords is not None
    assert set(passwords) == set(DATABASE_ROLES)


# 7. TLS to the database, verified


def test_every_task_checks_the_database_certificate_with_the_bundle_in_the_image(production: Synthesized) -> None:
    for name in (*SERVICES, "migrate"):
        assert production.environment(name)["DEPOT_DATABASE_SSL_ROOT_CERT"] == RDS_CA_BUNDLE, name
    assert f"/build/rds-ca-bundle.pem {RDS_CA_BUNDLE}" in (ROOT / "Dockerfile").read_text()
    production.template.has_resource_properties(
        "AWS::RDS::DBInstance", {"CACertificateIdentifier": "rds-ca-rsa2048-g1"}
    )


def test_a_production_template_with_https_passes_cfn_lint(tmp_path: Path) -> None:
    app = cdk.App(
        outdir=str(tmp_path),
        context={**json.loads((ROOT / "deploy" / "cdk.json").read_text())["context"], "environment": "production",
                 **CERTIFICATE, **ALARMED},
    )  # fmt: skip
    base = DepotBaseStack(app, "DepotBase")
    DepotStack(app, "Depot", config=DeployConfig.from_context(app.node), base=base)
    app.synth()
    templates = sorted(str(t) for t in tmp_path.glob("*.template.json"))
    assert len(templates) == 2
    linted = subprocess.run([Path(sys.executable).parent / "cfn-lint", *templates], capture_output=True, text=True,
                            check=False)  # fmt: skip
    assert linted.returncode == 0, linted.stdout + linted.stderr
