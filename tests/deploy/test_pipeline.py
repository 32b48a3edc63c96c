"""`make deploy`, `make rollback` and `make synth` as an operator runs them, proven offline.

The deploy runs the very commands `make -n deploy` prints, step after step as make would, against
a moto server through the real AWS CLI; docker, curl and the CDK CLI are recording stubs
(`deploy_stubs.py`: the CDK stub synthesizes the app as the CLI does and deploys it to moto). The
pinned CDK CLI itself is installed by `npm ci` and synthesizes the same templates as `make synth`.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr

from auth_service.app import create_app as create_auth_app
from auth_service.cli import _keep_in_secret
from auth_service.keys import load_signing_key
from auth_service.settings import AuthSettings
from tests.deploy import deploy_stubs
from tests.helpers import in_process, moto_server

os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")

import aws_cdk as cdk
from aws_cdk.assertions import Template

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
sys.path.insert(0, str(DEPLOY))

from app import build  # noqa: E402

STUBS = Path(__file__).resolve().parent / "deploy_stubs.py"
ZYGOTE = STUBS.with_name("aws_zygote.py")
REGION = "eu-west-1"
STEPS = ["prerequisites", "base", "signing-key", "images", "migrate-image", "migrate", "services", "wait-stable",
         "smoke"]  # fmt: skip
IMAGES = ["auth_service", "package_service", "validator_service", "web_service", "migrate"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)


def template_of(out: Path, stack: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((out / f"{stack}.template.json").read_text())
    return loaded


def resources_of(template: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [resource for resource in template["Resources"].values() if resource["Type"] == kind]


# The CDK CLI and `make synth`


def test_npm_ci_installs_the_pinned_cli_which_synthesizes_what_make_synth_does(tmp_path: Path) -> None:
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed: `npm ci` in deploy/ cannot be tried")
    app = tmp_path / "deploy"
    app.mkdir()
    for name in ("package.json", "package-lock.json", "cdk.json", "app.py", "depot_stack.py"):
        shutil.copy(DEPLOY / name, app / name)
    installed = run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"], app)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    pinned = json.loads((DEPLOY / "package.json").read_text())["devDependencies"]["aws-cdk"]
    version = run([str(app / "node_modules" / ".bin" / "cdk"), "--version"], app)
    assert version.returncode == 0, version.stderr
    assert version.stdout.split()[0] == pinned

    # The CLI runs cdk.json's `python app.py` with the project's python first on PATH, as deploy.sh does.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "CDK_DISABLE_CLI_TELEMETRY": "true", "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip
    for name in ("CDK_DEFAULT_ACCOUNT", "CDK_DEFAULT_REGION", "CDK_OUT"):
        env.pop(name, None)
    context = ["alarm_email=ops@example.com", "log_retention_days=90"]
    by_cli = run(
        [str(app / "node_modules" / ".bin" / "cdk"), "synth", "--no-notices", "--quiet", "-o", str(tmp_path / "cli"),
         *[arg for pair in context for arg in ("-c", pair)]], app, env,
    )  # fmt: skip
    assert by_cli.returncode == 0, by_cli.stdout + by_cli.stderr
    by_make = run(["make", "synth", f"CDK_OUT={tmp_path / 'make'}", f"CONTEXT={' '.join(context)}"], ROOT)
    assert by_make.returncode == 0, by_make.stdout + by_make.stderr
    for stack in ("DepotBase", "Depot"):
        assert template_of(tmp_path / "cli", stack) == template_of(tmp_path / "make", stack), stack
    depot = template_of(tmp_path / "make", "Depot")
    assert [s["Properties"]["Endpoint"] for s in resources_of(depot, "AWS::SNS::Subscription")] == ["ops@example.com"]
    assert {g["Properties"]["RetentionInDays"] for g in resources_of(depot, "AWS::Logs::LogGroup")} == {90}
    # cdk.json's sizes: the validator scales down to 1 task there (the code's default is 2).
    targets = resources_of(depot, "AWS::ApplicationAutoScaling::ScalableTarget")
    assert sorted(target["Properties"]["MinCapacity"] for target in targets) == [1, 2, 2, 2]


def test_app_py_reads_cdk_json_like_the_cli_and_the_command_line_wins(tmp_path: Path) -> None:
    app = tmp_path / "deploy"
    app.mkdir()
    for name in ("app.py", "depot_stack.py"):
        shutil.copy(DEPLOY / name, app / name)
    settings = json.loads((DEPLOY / "cdk.json").read_text())
    settings["context"] |= {"log_retention_days": 14, "alarm_email": "cdk-json@example.com"}
    (app / "cdk.json").write_text(json.dumps(settings))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDK_")} | {"CDK_OUT": str(tmp_path / "out")}
    synth = run([sys.executable, "app.py", "-c", "alarm_email=command-line@example.com"], app, env)
    assert synth.returncode == 0, synth.stderr
    depot = template_of(tmp_path / "out", "Depot")
    assert {g["Properties"]["RetentionInDays"] for g in resources_of(depot, "AWS::Logs::LogGroup")} == {14}
    assert [s["Properties"]["Endpoint"] for s in resources_of(depot, "AWS::SNS::Subscription")] == [
        "command-line@example.com"
    ]
    refused = run([sys.executable, "app.py", "-c", "no-equals-sign"], app, env)
    assert refused.returncode != 0
    assert "expected name=value" in refused.stderr


def test_make_passes_context_and_the_tag_to_every_deploy_step() -> None:
    planned = run(
        ["make", "-n", "deploy", "TAG=abc123", "CONTEXT=certificate_arn=arn:x public_url=https://d.example"], ROOT
    )
    lines = [line for line in planned.stdout.splitlines() if "deploy/deploy.sh " in line]
    assert [line.split("deploy/deploy.sh ")[1] for line in lines] == STEPS
    assert all("TAG=abc123 CONTEXT='certificate_arn=arn:x public_url=https://d.example' " in line for line in lines)
    rollback = run(["make", "-n", "rollback", "TAG=abc123"], ROOT).stdout
    assert [line.split("deploy/deploy.sh ")[1] for line in rollback.splitlines() if "deploy/deploy.sh " in line] == [
        "rollback", "wait-stable", "smoke",
    ]  # fmt: skip
    refused = run(["make", "rollback"], ROOT)
    assert refused.returncode != 0
    assert "usage: make rollback TAG=" in refused.stderr
    assert run(["make", "-n", "synth", "CONTEXT=a=1 b=2"], ROOT).stdout.count("app.py -c 'a=1' -c 'b=2'") == 1


def test_deploy_sh_keeps_to_what_macos_bash_3_2_and_bsd_tools_have() -> None:
    script = (DEPLOY / "deploy.sh").read_text()
    code = "\n".join(re.sub(r"(^|\s)#\s.*$", "", line) for line in script.splitlines()[1:])  # no comments
    for construct in (r"\bsed\s+-i", r"\\U", r"\breadarray\b", r"\bmapfile\b", r"declare -A", r"\$\{\w+(,,|\^\^)",
                      r"\bgrep -P\b", r"\bdate -d\b", r"\breadlink -f\b", r"&>>", r"\bxargs -r\b"):  # fmt: skip
        assert not re.search(construct, code), f"deploy.sh uses {construct!r}, which macOS lacks"
    assert run(["bash", "-n", str(DEPLOY / "deploy.sh")], ROOT).returncode == 0


def test_the_tag_names_uncommitted_changes_and_force_build_makes_a_new_one(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(DEPLOY, repo / "deploy", ignore=shutil.ignore_patterns("node_modules", "cdk.out"))
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    assert run([*git, "init", "-q"], repo).returncode == 0
    assert run([*git, "add", "-A"], repo).returncode == 0
    assert run([*git, "commit", "-q", "-m", "x"], repo).returncode == 0
    commit = run(["git", "rev-parse", "--short=12", "HEAD"], repo).stdout.strip()

    def tag(**env: str) -> str:
        done = run(["bash", "deploy/deploy.sh", "tag"], repo, {**os.environ, **env})
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert tag() == commit
    (repo / "new-file.txt").write_text("uncommitted")
    dirty = tag()
    assert re.fullmatch(rf"{commit}-dirty-[0-9a-f]{{12}}", dirty)
    assert run(["git", "status", "--porcelain"], repo).stdout == "?? new-file.txt\n", "the index is untouched"
    (repo / "new-file.txt").write_text("changed again")
    assert tag() not in {dirty, commit}, "other content, another tag"
    assert re.fullmatch(rf"{commit}-dirty-[0-9a-f]{{12}}-\d{{14}}", tag(FORCE_BUILD="1"))


# Templates: empty secrets, the images' platform


def synthesize(**context: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The templates of `DepotBase` and `Depot` as app.py builds them, with cdk.json's context and `context`."""
    app = cdk.App(context={**json.loads((DEPLOY / "cdk.json").read_text())["context"], **context})
    stack = build(app)
    base: dict[str, Any] = Template.from_stack(stack.base).to_json()
    depot: dict[str, Any] = Template.from_stack(stack).to_json()
    return base, depot


def test_the_secrets_are_created_without_a_value_and_images_follow_the_tasks_platform() -> None:
    base, depot = synthesize()
    secrets = resources_of(base, "AWS::SecretsManager::Secret")
    assert len(secrets) >= 2
    for name in ("SigningKey", "ServiceToken"):
        [secret] = [r for logical, r in base["Resources"].items() if logical.startswith(name)]
        assert secret["Properties"].keys() == {"Description"}, "no GenerateSecretString, no SecretString"
        assert secret["DeletionPolicy"] == "Retain"
    assert base["Outputs"]["ImagePlatform"]["Value"] == "linux/amd64"
    platforms = [d["Properties"]["RuntimePlatform"] for d in resources_of(depot, "AWS::ECS::TaskDefinition")]
    assert platforms == [{"CpuArchitecture": "X86_64", "OperatingSystemFamily": "LINUX"}] * 5, (
        "web_service and migrate too"
    )
    assert {"Environment", "DatabaseInstanceId", "MigrationTaskDefinition"} <= depot["Outputs"].keys()

    base, depot = synthesize(cpu_architecture="arm64")
    assert base["Outputs"]["ImagePlatform"]["Value"] == "linux/arm64"
    assert {d["Properties"]["RuntimePlatform"]["CpuArchitecture"]
            for d in resources_of(depot, "AWS::ECS::TaskDefinition")} == {"ARM64"}  # fmt: skip
    with pytest.raises(ValueError, match="cpu_architecture must be one of"):
        synthesize(cpu_architecture="sparc")


# deploy.sh against moto


@dataclass
class AwsCli:
    path: str  # the real AWS CLI
    python: bool  # whether it is the Python CLI, which can have a warm copy
    zygote: str  # the socket of its warm copy (`aws_zygote.py`), "" when it has none


@pytest.fixture(scope="module")
def aws_cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AwsCli]:
    found = shutil.which("aws")
    if found is None:
        pytest.skip("no AWS CLI on PATH: deploy.sh's steps cannot be run against moto")
    if Path(found).parent.name == "shims" and shutil.which("pyenv"):  # a pyenv shim costs half a second a call
        found = run(["pyenv", "which", "aws"], ROOT).stdout.strip() or found
    shebang = Path(found).read_bytes()[:200].split(b"\n")[0].decode(errors="replace")
    interpreter = shebang[2:].strip() if shebang.startswith("#!") and "python" in shebang else ""
    if not interpreter:  # not the Python CLI (v2 is a binary): each call starts it
        yield AwsCli(found, False, "")
        return
    socket_path = tmp_path_factory.mktemp("aws") / "cli.sock"
    zygote = subprocess.Popen([*interpreter.split(), str(ZYGOTE), str(socket_path)], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert zygote.stdout is not None
    ready = zygote.stdout.readline().strip() == "ready"
    try:
        yield AwsCli(found, True, str(socket_path) if ready else "")
    finally:
        zygote.kill()
        zygote.wait()


@pytest.fixture
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture(scope="module")
def synth_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("synth")


@dataclass
class Run:
    steps: list[str]  # the steps run, the last one failed if `failed`
    failed: bool
    output: str
    calls: list[dict[str, Any]]  # the stubs' calls during this run


@dataclass
class Pipeline:
    """deploy.sh's world: the stubs first on PATH, the AWS CLI on a moto server."""

    root: Path
    moto_url: str
    aws: AwsCli
    synth_cache: Path
    context: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stubs = self.root / "stubs"
        self.bin = self.root / "bin"
        for folder in (self.stubs, self.bin):
            folder.mkdir(parents=True, exist_ok=True)
        for tool in ("cdk", "docker", "curl", "aws"):
            script = self.bin / tool
            script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STUBS}" {tool} "$@"\n')
            script.chmod(0o755)
        (self.root / "aws-config").write_text(f"[default]\nregion = {REGION}\n")

    @property
    def env(self) -> dict[str, str]:
        ambient = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DEPOT_", "CDK_"))}
        return ambient | {
            "PATH": f"{self.bin}:{os.environ['PATH']}", "CDK": str(self.bin / "cdk"), "POLL_SECONDS": "0",
            "DEPOT_STUBS": str(self.stubs), "DEPOT_SYNTH_CACHE": str(self.synth_cache), "DEPOT_REAL_AWS": self.aws.path,
            "DEPOT_AWS_ZYGOTE": self.aws.zygote,
            "AWS_ENDPOINT_URL": self.moto_url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION, "AWS_CONFIG_FILE": str(self.root / "aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.root / "no-credentials"), "AWS_PAGER": "",
        }  # fmt: skip

    def client(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=self.moto_url, region_name=REGION,
                            aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip

    def make(self, target: str, **variables: str) -> Run:
        """The deploy.sh commands `make -n <target>` prints, run one after the other until one fails, as make does."""
        assignments = [f"{k}={v}" for k, v in variables.items()]
        planned = run(["make", "-n", target, f"PY={sys.executable}", f"CONTEXT={' '.join(self.context)}",
                       *assignments], ROOT)  # fmt: skip
        assert planned.returncode == 0, planned.stderr
        commands = [line for line in planned.stdout.splitlines() if "deploy/deploy.sh " in line]
        return self._run(commands)

    def step(self, step: str, tag: str) -> Run:
        command = f"TAG={tag} CONTEXT='{' '.join(self.context)}' PYTHON={sys.executable} deploy/deploy.sh {step}"
        return self._run([command])

    def _run(self, commands: list[str]) -> Run:
        before = len(deploy_stubs.calls(self.stubs))
        steps, output = [], ""
        for command in commands:
            steps.append(command.split("deploy/deploy.sh ")[1])
            done = run(["bash", "-c", command], ROOT, self.env)
            output += done.stdout + done.stderr
            if done.returncode != 0:
                return Run(steps, True, output, deploy_stubs.calls(self.stubs)[before:])
        return Run(steps, False, output, deploy_stubs.calls(self.stubs)[before:])

    def steer_migration(self, exit_code: int) -> None:
        (self.stubs / "migration-exit-code").write_text(str(exit_code))

    def output(self, stack: str, name: str) -> str:
        outputs = self.client("cloudformation").describe_stacks(StackName=stack)["Stacks"][0]["Outputs"]
        return str(next(o["OutputValue"] for o in outputs if o["OutputKey"] == name))

    def parameter(self, name: str) -> str | None:
        try:
            return str(self.client("ssm").get_parameter(Name=f"/depot/Depot/{name}")["Parameter"]["Value"])
        except self.client("ssm").exceptions.ParameterNotFound:
            return None

    def secret(self, output: str) -> str:
        value = self.client("secretsmanager").get_secret_value(SecretId=self.output("DepotBase", output))
        return str(value["SecretString"])

    def task_definition(self, arn: str) -> tuple[str, str]:
        """The first container's name and image tag (moto's CloudFormation updates keep PascalCase keys)."""
        definition = self.client("ecs").describe_task_definition(taskDefinition=arn)["taskDefinition"]
        container = {key.lower(): value for key, value in definition["containerDefinitions"][0].items()}
        return str(container["name"]), str(container["image"]).rsplit(":", 1)[1]

    def services(self) -> dict[str, tuple[int, str]]:
        """Each ECS service's desired count and image, as moto holds them."""
        ecs = self.client("ecs")
        cluster = self.output("Depot", "ClusterName")
        names = [
            self.output("Depot", f"{n}ServiceName")
            for n in ("AuthService", "PackageService", "ValidatorService", "WebService")
        ]
        found = {}
        for service in ecs.describe_services(cluster=cluster, services=names)["services"]:
            name, tag = self.task_definition(service["taskDefinition"])
            found[name] = (service["desiredCount"], tag)
        return found

    def migration_image_tag(self) -> str:
        return self.task_definition(self.output("Depot", "MigrationTaskDefinition"))[1]

    def prewarm(self, *tag_pairs: list[str]) -> None:
        """Synthesize the contexts the run will ask for in one process (the stub pays the CDK's start-up each time)."""
        contexts = [deploy_stubs.cli_context(DEPLOY, [*pairs, *self.context]) for pairs in tag_pairs]
        listing = self.root / "contexts.json"
        listing.write_text(json.dumps(contexts))
        done = run([sys.executable, str(STUBS), "synth-many", str(DEPLOY), str(listing)], ROOT, self.env)
        assert done.returncode == 0, done.stderr


def production_context(pipeline: Pipeline) -> list[str]:
    """CONTEXT of a production deploy with HTTPS, with a certificate moto holds (its load balancer checks)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "depot.example.com")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key()).serial_number(1)
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256())
    )  # fmt: skip
    arn = pipeline.client("acm").import_certificate(
        Certificate=certificate.public_bytes(serialization.Encoding.PEM),
        PrivateKey=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )["CertificateArn"]
    return ["environment=production", f"certificate_arn={arn}", "public_url=https://depot.example.com",
            "alarm_email=ops@example.com"]  # fmt: skip


def loads_as_signing_key(pem: str) -> str:
    """The key id auth_service's own loader gives the PEM (it raises if it is none)."""
    return load_signing_key(AuthSettings(signing_key=SecretStr(pem))).kid


def cdk_calls(calls: list[dict[str, Any]], command: str = "deploy") -> list[list[str]]:
    return [c["argv"] for c in calls if c["tool"] == "cdk" and c["argv"][0] == command]


def context_of(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "-c"]


def aws_calls(calls: list[dict[str, Any]], *command: str) -> list[list[str]]:
    return [c["argv"] for c in calls if c["tool"] == "aws" and tuple(c["argv"][: len(command)]) == command]


def position(calls: list[dict[str, Any]], tool: str, *argv: str) -> int:
    """Where the first call of `tool` starting with `argv` is in `calls` (-1 if none)."""
    return next((i for i, c in enumerate(calls) if c["tool"] == tool and tuple(c["argv"][: len(argv)]) == argv), -1)


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_the_warm_aws_cli_answers_as_the_cli_itself(tmp_path: Path, moto_url: str, aws_cli: AwsCli) -> None:
    if not aws_cli.python:
        pytest.skip("this AWS CLI is no Python program (v2): it has no warm copy, every call starts it")
    assert aws_cli.zygote, "the warm copy of the Python AWS CLI did not start"
    pipeline = Pipeline(tmp_path, moto_url, aws_cli, tmp_path / "synth")
    answers: dict[str, list[tuple[int, str, str]]] = {}
    for zygote in (aws_cli.zygote, ""):
        name = f"/written-{'warm' if zygote else 'cold'}"
        commands = [
            (["--version"], ""),
            (["ecs", "no-such-operation"], ""),  # a usage error: exit status 2, the usage on stderr
            (["ssm", "get-parameter", "--name", "/none"], ""),  # an AWS error, its message on stderr
            (["ssm", "put-parameter", "--name", name, "--type", "String", "--value", "file:///dev/stdin"], "stdin"),
            (["ssm", "get-parameter", "--name", name, "--query", "Parameter.Value", "--output", "text"], ""),
        ]
        env = pipeline.env | {"DEPOT_AWS_ZYGOTE": zygote}
        answers[zygote] = []
        for argv, stdin in commands:
            done = subprocess.run([str(pipeline.bin / "aws"), *argv], input=stdin, capture_output=True, text=True,
                                  env=env, cwd=tmp_path, check=False)  # fmt: skip
            answers[zygote].append((done.returncode, done.stdout, done.stderr))
    warm, cold = answers[aws_cli.zygote], answers[""]
    assert warm == cold
    assert [code for code, _, _ in warm][:2] == [0, 2]
    assert warm[2][0] != 0
    assert "ParameterNotFound" in warm[2][2]
    assert warm[4] == (0, "stdin\n", "")


def test_the_signing_key_step_writes_a_key_keeps_it_and_replaces_what_is_no_key(
    tmp_path: Path, moto_url: str, aws_cli: AwsCli, synth_cache: Path
) -> None:
    pipeline = Pipeline(tmp_path, moto_url, aws_cli, synth_cache)
    for step in ("prerequisites", "base"):
        done = pipeline.step(step, "t")
        assert not done.failed, done.output
    with pytest.raises(pipeline.client("secretsmanager").exceptions.ResourceNotFoundException):
        pipeline.secret("SigningKeySecret")  # created empty, as CloudFormation creates it from the template

    written = pipeline.step("signing-key", "t")
    assert not written.failed, written.output
    assert "generating the token signing key" in written.output
    pem = pipeline.secret("SigningKeySecret")
    kid = loads_as_signing_key(pem)
    assert "PRIVATE KEY" not in written.output, "the key is never printed"

    kept = pipeline.step("signing-key", "t")
    assert not kept.failed, kept.output
    assert f"loads: kept (EdDSA key {kid})" in kept.output
    assert pipeline.secret("SigningKeySecret") == pem

    # What the template used to make CloudFormation put there: a random password, no key.
    secret_arn = pipeline.output("DepotBase", "SigningKeySecret")
    pipeline.client("secretsmanager").put_secret_value(SecretId=secret_arn, SecretString="Zq8#generated-password")
    replaced = pipeline.step("signing-key", "t")
    assert not replaced.failed, replaced.output
    assert "holds a value that is no signing key auth_service can load" in replaced.output
    assert "replacing it with a new key" in replaced.output
    assert loads_as_signing_key(pipeline.secret("SigningKeySecret")) != kid


def test_staging_migrates_without_a_snapshot_and_services_refuse_an_unmigrated_tag(
    tmp_path: Path, moto_url: str, aws_cli: AwsCli, synth_cache: Path
) -> None:
    pipeline = Pipeline(tmp_path, moto_url, aws_cli, synth_cache)
    for step in ("prerequisites", "base", "signing-key", "images", "migrate-image"):
        done = pipeline.step(step, "abc")
        assert not done.failed, done.output
    refused = pipeline.step("services", "abc")
    assert refused.failed
    assert "the migrations of abc have not succeeded (last migrated: none)" in refused.output
    assert not cdk_calls(refused.calls)

    migrated = pipeline.step("migrate", "abc")
    assert not migrated.failed, migrated.output
    assert "no snapshot before migrating in staging" in migrated.output
    assert position(migrated.calls, "aws", "rds", "create-db-snapshot") == -1
    assert position(migrated.calls, "aws", "ecs", "run-task") != -1
    assert pipeline.parameter("migrated-tag") == "abc"
    assert {count for count, _ in pipeline.services().values()} == {0}, "paused until the services step"


async def test_the_service_token_a_fresh_stack_gets_is_one_auth_service_accepts(
    tmp_path: Path, moto_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, _ = synthesize()
    [resource] = [r for logical, r in base["Resources"].items() if logical.startswith("ServiceToken")]
    for name, value in {"AWS_ENDPOINT_URL": moto_url, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    manager = boto3.client("secretsmanager")
    # As CloudFormation creates it from the template (no value); the migration task then fills it.
    arn = manager.create_secret(Name="DepotBase-ServiceToken", **resource["Properties"])["ARN"]
    settings = AuthSettings(database_url=database_url, data_dir=tmp_path, argon2_time_cost=1, argon2_memory_kib=1024,
                            argon2_parallelism=1)  # fmt: skip
    await _keep_in_secret(settings, "depot-service", arn)
    token = manager.get_secret_value(SecretId=arn)["SecretString"]
    assert token == token.strip()
    assert not token.startswith("{"), "ECS hands the whole secret to DEPOT_SERVICE_TOKEN: a bare token"

    async def exchanged(api_token: str) -> httpx.Response:
        async with in_process(create_auth_app(settings)) as auth:
            return await auth.post("/auth/token", json={"grant_type": "api_token", "api_token": api_token})

    granted = await exchanged(token)
    assert granted.status_code == 200, granted.text  # as validator_service exchanges it
    assert granted.json()["access_token"]

    await _keep_in_secret(settings, "depot-service", arn)
    assert manager.get_secret_value(SecretId=arn)["SecretString"] == token, "a valid token is kept"
    manager.put_secret_value(SecretId=arn, SecretString="Zq8#generated-password")  # what the old template generated
    await _keep_in_secret(settings, "depot-service", arn)
    replaced = manager.get_secret_value(SecretId=arn)["SecretString"]
    assert replaced != "Zq8#generated-password"
    assert (await exchanged(replaced)).status_code == 200
    assert (await exchanged("Zq8#generated-password")).status_code == 401


def test_make_deploy_end_to_end_rerun_after_failed_migrations_and_rollback(
    tmp_path: Path, moto_url: str, aws_cli: AwsCli, synth_cache: Path
) -> None:
    older = run(["git", "rev-parse", "--short=12", "HEAD~1"], ROOT).stdout.strip()
    newer = run(["git", "rev-parse", "--short=12", "HEAD"], ROOT).stdout.strip()
    assert older
    assert newer
    assert older != newer
    pipeline = Pipeline(tmp_path, moto_url, aws_cli, synth_cache)
    pipeline.context = production = production_context(pipeline)
    pipeline.prewarm(
        [], [f"image_tag={older}", f"migrate_image_tag={older}", "paused=true"],
        [f"image_tag={older}", f"migrate_image_tag={older}"], [f"image_tag={older}", f"migrate_image_tag={newer}"],
        [f"image_tag={newer}", f"migrate_image_tag={newer}"],
    )  # fmt: skip

    # 1. A first deploy whose migrations fail: nothing runs, nothing is recorded as migrated.
    pipeline.steer_migration(1)
    first = pipeline.make("deploy", TAG=older)
    assert first.failed
    assert first.steps == STEPS[: STEPS.index("migrate") + 1], first.output
    assert "the migration task exited with 1" in first.output
    assert "log group /depot/Depot/migrate" in first.output
    assert "the services keep running nothing (paused)" in first.output
    calls = first.calls
    for argv in cdk_calls(calls, "deploy") + cdk_calls(calls, "bootstrap"):
        assert context_of(argv)[-len(production) :] == production, "CONTEXT reaches every cdk command"
    assert [argv[1] for argv in cdk_calls(calls)] == ["DepotBase", "Depot"]
    assert context_of(cdk_calls(calls)[1])[:3] == [f"image_tag={older}", f"migrate_image_tag={older}", "paused=true"]
    registry = pipeline.output("DepotBase", "AuthServiceRepositoryUri").split("/")[0]
    builds = [c["argv"] for c in calls if c["tool"] == "docker" and c["argv"][0] == "build"]
    assert [option(b, "--target") for b in builds] == IMAGES
    for argv, image in zip(builds, IMAGES, strict=True):
        assert option(argv, "--platform") == "linux/amd64"
        assert option(argv, "--tag") == f"{registry}/depot/{image.replace('_', '-')}:{older}"
    pushes = [c["argv"][1] for c in calls if c["tool"] == "docker" and c["argv"][0] == "push"]
    assert pushes == [option(b, "--tag") for b in builds]
    order = [
        position(calls, "cdk", "bootstrap"), position(calls, "cdk", "deploy", "DepotBase"),
        position(calls, "aws", "secretsmanager", "put-secret-value"), position(calls, "docker", "build"),
        position(calls, "cdk", "deploy", "Depot"), position(calls, "aws", "rds", "create-db-snapshot"),
        position(calls, "aws", "ecs", "run-task"),
    ]  # fmt: skip
    assert -1 not in order, order
    assert order == sorted(order), order
    [run_task] = aws_calls(calls, "ecs", "run-task")
    assert option(run_task, "--task-definition") == pipeline.output("Depot", "MigrationTaskDefinition")
    assert option(run_task, "--cluster") == pipeline.output("Depot", "ClusterName")
    assert f"subnets=[{pipeline.output('Depot', 'TaskSubnets')}]" in option(run_task, "--network-configuration")
    [snapshot] = aws_calls(calls, "rds", "create-db-snapshot")
    assert option(snapshot, "--db-instance-identifier") == pipeline.output("Depot", "DatabaseInstanceId")
    assert option(snapshot, "--db-snapshot-identifier") == f"depot-before-{older}"
    assert pipeline.migration_image_tag() == older
    assert {count for count, _ in pipeline.services().values()} == {0}, "paused: no service task"
    assert pipeline.parameter("migrated-tag") is None
    assert pipeline.parameter("services-tag") is None
    signing_key = pipeline.secret("SigningKeySecret")
    loads_as_signing_key(signing_key)

    # 2. The rerun, migrations passing: still paused until they have, then the services start.
    pipeline.steer_migration(0)
    second = pipeline.make("deploy", TAG=older)
    assert not second.failed, second.output
    assert second.steps == STEPS
    calls = second.calls
    assert not [c for c in calls if c["tool"] == "docker" and c["argv"][0] in {"build", "push"}], "tags are immutable"
    assert second.output.count("exists: not rebuilt") == len(IMAGES)
    assert "the signing key in" in second.output
    assert "loads: kept" in second.output
    assert pipeline.secret("SigningKeySecret") == signing_key
    deploys = cdk_calls(calls)
    assert [argv[1] for argv in deploys] == ["DepotBase", "Depot", "Depot"]
    assert "paused=true" in context_of(deploys[1]), "a failed migration never unpauses the services"
    assert context_of(deploys[2])[:2] == [f"image_tag={older}", f"migrate_image_tag={older}"]
    assert "paused=true" not in context_of(deploys[2])
    paused, rolled = (i for i, c in enumerate(calls) if c["tool"] == "cdk" and c["argv"][:2] == ["deploy", "Depot"])
    assert paused < position(calls, "aws", "ecs", "run-task") < rolled, "migrated before the services roll"
    assert "snapshot depot-before-" in second.output
    assert "exists (available): kept" in second.output
    assert pipeline.parameter("migrated-tag") == older
    assert pipeline.parameter("services-tag") == older
    assert pipeline.services() == {"auth_service": (2, older), "package_service": (2, older),
                                   "validator_service": (1, older), "web_service": (2, older)}  # fmt: skip
    [stable] = aws_calls(calls, "ecs", "wait", "services-stable")
    assert stable[stable.index("--services") + 1 :] == [
        pipeline.output("Depot", f"{n}ServiceName")
        for n in ("AuthService", "PackageService", "ValidatorService", "WebService")
    ]
    assert [c["argv"][-1] for c in calls if c["tool"] == "curl"] == [
        f"https://depot.example.com{p}/health/ready" for p in ("/auth", "/packages", "/validate", "")
    ]

    # 3. The next release's migrations fail: the services keep the release they run.
    pipeline.steer_migration(3)
    third = pipeline.make("deploy", TAG=newer)
    assert third.failed, third.output
    assert third.steps[-1] == "migrate", third.output
    assert f"the services keep running {older}" in third.output
    deploys = cdk_calls(third.calls)
    assert context_of(deploys[-1])[:2] == [f"image_tag={older}", f"migrate_image_tag={newer}"]
    assert "paused=true" not in context_of(deploys[-1])
    assert pipeline.migration_image_tag() == newer
    assert {tag for _, tag in pipeline.services().values()} == {older}
    assert pipeline.parameter("migrated-tag") == older
    assert len([b for b in third.calls if b["tool"] == "docker" and b["argv"][0] == "build"]) == len(IMAGES)

    # 4. Fixed and run again: the services roll to the release whose migrations passed.
    pipeline.steer_migration(0)
    fourth = pipeline.make("deploy", TAG=newer)
    assert not fourth.failed, fourth.output
    assert pipeline.parameter("migrated-tag") == newer
    assert pipeline.services() == {"auth_service": (2, newer), "package_service": (2, newer),
                                   "validator_service": (1, newer), "web_service": (2, newer)}  # fmt: skip
    snapshots = pipeline.client("rds").describe_db_snapshots(SnapshotType="manual")["DBSnapshots"]
    assert sorted(s["DBSnapshotIdentifier"] for s in snapshots) == sorted(
        [f"depot-before-{older}", f"depot-before-{newer}"]
    )

    # 5. Deploying the older release again would run its migrations on the newer schema: refused.
    refused = pipeline.make("deploy", TAG=older)
    assert refused.failed
    assert refused.steps == ["prerequisites"]
    assert f"make rollback TAG={older}" in refused.output
    assert not cdk_calls(refused.calls)

    # 6. The rollback: the services' image only, no build, no migration, no snapshot.
    back = pipeline.make("rollback", TAG=older)
    assert not back.failed, back.output
    assert back.steps == ["rollback", "wait-stable", "smoke"]
    [deploy] = cdk_calls(back.calls)
    assert context_of(deploy) == [f"image_tag={older}", f"migrate_image_tag={newer}", *production]
    for forbidden in (("aws", "ecs", "run-task"), ("aws", "rds", "create-db-snapshot"), ("docker", "build")):
        assert position(back.calls, *forbidden) == -1, forbidden
    assert {tag for _, tag in pipeline.services().values()} == {older}
    assert pipeline.migration_image_tag() == newer, "the migration task stays at the newest migrated tag"
    assert pipeline.parameter("services-tag") == older
    assert pipeline.parameter("migrated-tag") == newer

    # 7. A rollback to a tag that was never built or run changes nothing.
    unknown = pipeline.make("rollback", TAG="0123456789ab")
    assert unknown.failed
    assert "has no image 0123456789ab" in unknown.output
    assert not cdk_calls(unknown.calls)
