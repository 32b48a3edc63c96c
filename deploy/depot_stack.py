"""Depot on AWS: four Fargate services behind one ALB, RDS PostgreSQL, S3 with a customer KMS key.

The shape follows ../shared/docs/ARCHITECTURE.md: one ALB with a listener rule per service prefix
(the prefix is not stripped) and web_service (the pages) as its default action, one ECS service
per app in private subnets, one database with a schema per service, one bucket, the queues in
PostgreSQL. Sizes come from the CDK context (cdk.json, or `-c name=value`), so that a deployment
chooses them without code changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aws_cdk import (
    Annotations,
    CfnOutput,
    Duration,
    RemovalPolicy,
    Stack,
    region_info,
)
from aws_cdk import aws_applicationautoscaling as appscaling
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_rds as rds
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

CONTAINER_PORT = 8000
METRICS_NAMESPACE = "Depot"  # queue depth, published by validator_service as embedded metrics
SERVICE_ACCOUNT = "depot-service"
METRICS_RULE_PRIORITY = 5  # before every service's rule
ADMIN_USERNAME = "admin"  # created by auth_service at its first start, with the password in DepotBase's secret
# Where the images carry Amazon RDS's certificate authorities (the Dockerfile's `rds_ca` stage).
RDS_CA_BUNDLE = "/usr/local/share/depot/rds-ca-bundle.pem"
# Each service's own database role (common/database_roles.py makes them and their grants when migrating).
DATABASE_ROLES = {
    "auth_service": "depot_auth", "package_service": "depot_packages", "validator_service": "depot_validator",
}  # fmt: skip
# What one service asks of another, through the internal load balancer; nothing else is routed there.
INTERNAL_ROUTES = {
    "auth_service": ("/auth/.well-known/jwks.json", "/auth/token", "/auth/users/*"),
    "package_service": ("/packages/*/access",),
}
INTERNAL_CALLERS = ("package_service", "validator_service")
# web_service: the pages, at `/` and every path no API prefix takes (the public listener's default
# action). It holds no data and opens no database connection; it calls the three APIs, with the
# signed-in user's own token, on the internal balancer's own listener (WEB_API_PORT, see
# _internal_load_balancer).
WEB_SERVICE = "web_service"
WEB_API_PORT = 8080

# Stopping a task (deploys, scale-in). The ALB first drains the target (deregistration delay: no new
# requests, in-flight ones go on), then ECS sends SIGTERM: uvicorn stops accepting, lets in-flight
# requests finish for GRACEFUL_SHUTDOWN_SECONDS, then the app's lifespan stops its queue workers
# (10 s, then 10 s more for cancelled jobs) and awaits the tasks requests left (common.app's
# SHUTDOWN_DRAIN_SECONDS, 10 s); ECS kills the container STOP_TIMEOUT_SECONDS after SIGTERM.
STOP_TIMEOUT_SECONDS = 120  # Fargate's maximum
APP_SHUTDOWN_SECONDS = 30  # the lifespan's shutdown, at most (see above)
GRACEFUL_SHUTDOWN_SECONDS = STOP_TIMEOUT_SECONDS - APP_SHUTDOWN_SECONDS - 10  # 10 s to spare
REQUEST_DRAIN_SECONDS = 30  # deregistration delay where no request moves artifact bytes (15 s deadline)
TRANSFER_SERVICES = frozenset({"package_service"})  # streams artifacts: drains for `transfer_drain_seconds`
KEEPALIVE_MARGIN_SECONDS = 5  # uvicorn keeps an idle connection this much longer than the ALB does

# Database connections: every process holds at most pool + overflow, plus one LISTEN connection per
# queue worker it runs. The plan counts every service at its max_tasks, twice (a rollout runs old and
# new tasks side by side, up to 200 %), and the migration task, which may run meanwhile.
QUEUE_LISTENERS = {"auth_service": 0, "package_service": 1, "validator_service": 1}
POOL_DEFAULTS = {
    "auth_service": (4, 2),
    "package_service": (7, 3),
    "validator_service": (4, 2),
    WEB_SERVICE: (0, 0),  # no database
}  # size, overflow; fmt: skip
MIGRATION_POOL = (2, 0)  # the migration task's pool size and overflow
RDS_RESERVED_CONNECTIONS = 5  # superuser_reserved_connections (3) + rds.rds_superuser_reserved_connections (2)
CONNECTION_HEADROOM = 0.8  # the plan may use this share of the rest; the alarm fires above it
# Memory (GiB) of the classes the table knows. RDS sets max_connections to
# LEAST(DBInstanceClassMemory / 9531392, 5000), where DBInstanceClassMemory is the class's memory
# less what the OS and RDS keep (~300 MiB: a db.t4g.medium allows ~417, not 450). Another class, or a
# parameter group that sets max_connections, needs the `db_max_connections` context.
DB_CLASS_MEMORY_GIB = {
    **{f"{family}.{size}": gib for family in ("t3", "t4g")
       for size, gib in (("micro", 1), ("small", 2), ("medium", 4), ("large", 8), ("xlarge", 16), ("2xlarge", 32))},
    **{f"{family}.{size}": gib for family in ("m5", "m6g", "m6i", "m7g", "m7i")
       for size, gib in (("large", 8), ("xlarge", 16), ("2xlarge", 32), ("4xlarge", 64))},
    **{f"{family}.{size}": gib for family in ("r5", "r6g", "r6i", "r7g", "r7i")
       for size, gib in (("large", 16), ("xlarge", 32), ("2xlarge", 64), ("4xlarge", 128))},
}  # fmt: skip
RDS_RESERVED_MEMORY_BYTES = 300 * 1024**2
# The tasks' CPU architecture (context `cpu_architecture`) and the `docker build --platform` it needs.
IMAGE_PLATFORMS = {"x86_64": "linux/amd64", "arm64": "linux/arm64"}


@dataclass(frozen=True)
class ServiceSpec:
    """One ECS service: its image target, path prefix, listener rule priority and sizing."""

    name: str  # also the Dockerfile target and the ECR repository's suffix
    prefix: str  # "" for web_service: the load balancer's default action, not a path rule
    priority: int
    cpu: int
    memory: int
    min_tasks: int
    max_tasks: int
    db_pool_size: int = 5
    db_max_overflow: int = 2

    @property
    def uses_database(self) -> bool:
        """Whether the service connects to the database (as its own role): not web_service."""
        return self.name in DATABASE_ROLES

    @property
    def connections_per_task(self) -> int:
        """The most database connections one task opens: its pool, overflow and queue listeners."""
        if not self.uses_database:
            return 0
        return self.db_pool_size + self.db_max_overflow + QUEUE_LISTENERS.get(self.name, 0)


@dataclass(frozen=True)
class DeployConfig:
    """What a deployment chooses, from the CDK context."""

    environment: str
    image_tag: str
    migrate_image_tag: str  # `make deploy` migrates with the new image before the services roll to it
    paused: bool  # the first deploy: no task runs until the migrations have
    services: tuple[ServiceSpec, ...]
    certificate_arn: str | None
    alarm_email: str | None
    public_url: str | None  # with a certificate: the https:// URL of its domain, which points at the ALB
    max_azs: int
    nat_gateways: int
    db_instance_type: str
    db_allocated_storage_gib: int
    log_retention_days: int
    alb_idle_timeout_seconds: int
    allow_insecure_http: bool = False  # production refuses to synthesize without a certificate unless this is set
    registration_open: bool = False  # on AWS accounts are made by the admin unless an operator opens registration
    noncurrent_version_expiration_days: int = 30  # how long a deleted or replaced artifact stays recoverable
    transfer_drain_seconds: int = 300  # package_service's deregistration delay: streamed transfers may finish
    db_max_connections: int | None = None  # what the database accepts, when the class table does not know
    allow_no_alarm_email: bool = False  # production without `alarm_email`: the topic is subscribed otherwise
    access_log_retention_days: int = 90
    ecs_exec: bool = True
    cpu_architecture: str = "x86_64"  # of every task; the images are built for it

    def __post_init__(self) -> None:
        if self.production and not self.certificate_arn and not self.allow_insecure_http:
            raise ValueError(
                "production needs HTTPS: give -c certificate_arn=<ACM certificate ARN> -c public_url=https://<its "
                "domain>, or -c allow_insecure_http=true to serve passwords and tokens in clear knowingly"
            )
        if self.noncurrent_version_expiration_days < 1:
            raise ValueError("noncurrent_version_expiration_days must be at least 1")

    @property
    def production(self) -> bool:
        return self.environment == "production"

    @property
    def image_platform(self) -> str:
        """What `docker build --platform` must target for the tasks to run the images."""
        return IMAGE_PLATFORMS[self.cpu_architecture]

    @property
    def runtime_platform(self) -> ecs.RuntimePlatform:
        """The task definitions' platform: Linux on `cpu_architecture`."""
        architecture = {"x86_64": ecs.CpuArchitecture.X86_64, "arm64": ecs.CpuArchitecture.ARM64}
        return ecs.RuntimePlatform(
            cpu_architecture=architecture[self.cpu_architecture],
            operating_system_family=ecs.OperatingSystemFamily.LINUX,
        )

    @classmethod
    def from_context(cls, node: Any) -> DeployConfig:
        """The configuration from `node.try_get_context`, with defaults for what is not given."""

        def get(name: str, default: Any) -> Any:
            value = node.try_get_context(name)
            return default if value is None else value

        sizes: dict[str, dict[str, int]] = get("services", {})
        defaults = {
            "auth_service": ("/auth", 10, 256, 512),
            "package_service": ("/packages", 20, 512, 1024),
            "validator_service": ("/validate", 30, 1024, 2048),
            WEB_SERVICE: ("", 40, 256, 512),  # the default action; its priority only orders internal rules
        }
        services = tuple(
            ServiceSpec(
                name=name,
                prefix=prefix,
                priority=priority,
                cpu=int(sizes.get(name, {}).get("cpu", cpu)),
                memory=int(sizes.get(name, {}).get("memory", memory)),
                min_tasks=int(sizes.get(name, {}).get("min_tasks", 2)),
                max_tasks=int(sizes.get(name, {}).get("max_tasks", 6)),
                db_pool_size=int(sizes.get(name, {}).get("db_pool_size", POOL_DEFAULTS[name][0])),
                db_max_overflow=int(sizes.get(name, {}).get("db_max_overflow", POOL_DEFAULTS[name][1])),
            )
            for name, (prefix, priority, cpu, memory) in defaults.items()
        )
        return cls(
            environment=str(get("environment", "staging")),
            image_tag=str(get("image_tag", "latest")),
            migrate_image_tag=str(get("migrate_image_tag", get("image_tag", "latest"))),
            paused=str(get("paused", "false")).lower() == "true",
            services=services,
            certificate_arn=get("certificate_arn", None),
            alarm_email=get("alarm_email", None),
            public_url=get("public_url", None),
            max_azs=int(get("max_azs", 2)),
            # One NAT gateway per AZ in production (an AZ's outage leaves the others their egress);
            # staging shares one to save its cost.
            nat_gateways=int(
                get("nat_gateways", get("max_azs", 2) if get("environment", "staging") == "production" else 1)
            ),
            db_instance_type=str(get("db_instance_type", "t4g.medium")),
            db_allocated_storage_gib=int(get("db_allocated_storage_gib", 20)),
            log_retention_days=int(get("log_retention_days", 30)),
            alb_idle_timeout_seconds=int(get("alb_idle_timeout_seconds", 300)),
            allow_insecure_http=str(get("allow_insecure_http", "false")).lower() == "true",
            registration_open=str(get("registration_open", "false")).lower() == "true",
            noncurrent_version_expiration_days=int(get("noncurrent_version_expiration_days", 30)),
            transfer_drain_seconds=int(get("transfer_drain_seconds", 300)),
            db_max_connections=None if get("db_max_connections", None) is None else int(get("db_max_connections", 0)),
            allow_no_alarm_email=str(get("allow_no_alarm_email", "false")).lower() == "true",
            access_log_retention_days=int(get("access_log_retention_days", 90)),
            ecs_exec=str(get("ecs_exec", "true")).lower() == "true",
            cpu_architecture=_cpu_architecture(str(get("cpu_architecture", "x86_64"))),
        )

    @property
    def keepalive_seconds(self) -> int:
        """uvicorn's keep-alive: longer than the ALB's idle timeout, so that the ALB always closes first."""
        return self.alb_idle_timeout_seconds + KEEPALIVE_MARGIN_SECONDS

    def drain_seconds(self, service: str) -> int:
        """A service's deregistration delay: how long its in-flight requests may go on when a task stops."""
        return self.transfer_drain_seconds if service in TRANSFER_SERVICES else REQUEST_DRAIN_SECONDS


@dataclass(frozen=True)
class ConnectionBudget:
    """The database connections a deployment plans for, against what its database accepts."""

    max_connections: int
    usable: int  # CONNECTION_HEADROOM of max_connections after RDS's reserved ones: the plan's ceiling
    planned: dict[str, int]  # the most each service opens (every task, twice over in a rollout), and the migration

    @property
    def total(self) -> int:
        return sum(self.planned.values())


def estimated_max_connections(instance_type: str) -> int | None:
    """RDS PostgreSQL's default max_connections for an instance class the table knows, else None."""
    gib = DB_CLASS_MEMORY_GIB.get(instance_type.removeprefix("db."))
    if gib is None:
        return None
    return min((gib * 1024**3 - RDS_RESERVED_MEMORY_BYTES) // 9531392, 5000)


def connection_budget(config: DeployConfig) -> ConnectionBudget:
    """The plan, or a ValueError (the synth fails) when it does not fit the database."""
    max_connections = config.db_max_connections or estimated_max_connections(config.db_instance_type)
    if max_connections is None:
        raise ValueError(
            f"db_instance_type {config.db_instance_type} is not in the table of known classes: set "
            "db_max_connections (what `SHOW max_connections` answers on that instance)"
        )
    usable = int((max_connections - RDS_RESERVED_CONNECTIONS) * CONNECTION_HEADROOM)
    databased = [spec for spec in config.services if spec.uses_database]  # web_service opens none
    planned = {spec.name: spec.connections_per_task * spec.max_tasks * 2 for spec in databased}
    planned["migrate"] = sum(MIGRATION_POOL)
    budget = ConnectionBudget(max_connections, usable, planned)
    if budget.total > usable:
        detail = ", ".join(
            f"{spec.name} {planned[spec.name]} ({spec.connections_per_task} per task x {spec.max_tasks} tasks x 2)"
            for spec in databased
        )
        raise ValueError(
            f"database connections over budget: {budget.total} planned ({detail}, migrate {planned['migrate']}), "
            f"but {config.db_instance_type} accepts {max_connections} and the plan may use {usable} "
            f"({CONNECTION_HEADROOM:.0%} after {RDS_RESERVED_CONNECTIONS} reserved): lower db_pool_size, "
            "db_max_overflow or max_tasks under `services`, or choose a larger db_instance_type"
        )
    return budget


IMAGES = ("auth_service", "package_service", "validator_service", WEB_SERVICE, "migrate")


class DepotBaseStack(Stack):
    """What must exist before the services can start: the image repositories and four secrets.

    `make deploy` deploys it first, pushes the images and fills the signing key, then deploys
    `DepotStack`. Everything here is kept by `make destroy` (images and keys are cheap to keep
    and costly to lose).
    """

    def __init__(
        self, scope: Construct, construct_id: str, *, image_platform: str = IMAGE_PLATFORMS["x86_64"], **kwargs: Any
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.repositories = {
            image: ecr.Repository(
                self, f"{image}Repository", repository_name=f"depot/{image}".replace("_", "-"),
                image_scan_on_push=True, image_tag_mutability=ecr.TagMutability.IMMUTABLE,
                removal_policy=RemovalPolicy.RETAIN,
            )
            for image in IMAGES
        }  # fmt: skip
        # Filled by `make deploy`: the token signing key (`deploy.sh signing-key`); the service
        # account's API token (the migration task). Both are created empty, see `_empty_secret`.
        self.signing_key = _empty_secret(self, "SigningKey", "Depot auth_service token signing key (PEM)")
        self.service_token = _empty_secret(self, "ServiceToken", f"API token of the {SERVICE_ACCOUNT} account")
        # The first admin's password, generated by CloudFormation: auth_service creates the account
        # `admin` with it when no admin exists, and never touches an existing account.
        self.admin_password = secretsmanager.Secret(
            self, "AdminPassword", description=f"Depot: the first password of the `{ADMIN_USERNAME}` account",
            generate_secret_string=secretsmanager.SecretStringGenerator(password_length=32, exclude_punctuation=True),
            removal_policy=RemovalPolicy.RETAIN,
        )  # fmt: skip
        # web_service's session cookies are signed and encrypted with a key derived from this string
        # (web_service.sessions: SHA-256 of it makes the Fernet key), so CloudFormation can generate it:
        # 64 alphanumeric characters (about 380 bits), over the 32 characters its settings require.
        self.session_key = secretsmanager.Secret(
            self, "SessionKey", description="Depot web_service: the key of its session cookies",
            generate_secret_string=secretsmanager.SecretStringGenerator(password_length=64, exclude_punctuation=True),
            removal_policy=RemovalPolicy.RETAIN,
        )  # fmt: skip
        for image, repository in self.repositories.items():
            CfnOutput(self, f"{image.title().replace('_', '')}RepositoryUri", value=repository.repository_uri)
        CfnOutput(self, "SigningKeySecret", value=self.signing_key.secret_arn)
        CfnOutput(self, "ServiceTokenSecret", value=self.service_token.secret_arn)
        CfnOutput(self, "AdminPasswordSecret", value=self.admin_password.secret_arn)
        CfnOutput(self, "SessionKeySecret", value=self.session_key.secret_arn)
        # Read by `deploy.sh images` before the Depot stack exists: the platform its tasks run on.
        CfnOutput(self, "ImagePlatform", value=image_platform)


class DepotStack(Stack):
    """Everything else Depot needs in one AWS account and region."""

    def __init__(
        self, scope: Construct, construct_id: str, *, config: DeployConfig, base: DepotBaseStack, **kwargs: Any
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.config = config
        self.base = base  # referencing its resources makes this stack depend on it
        retain = RemovalPolicy.RETAIN if config.production else RemovalPolicy.DESTROY
        self.connection_budget = connection_budget(config)  # before anything: a plan over budget fails the synth

        # Network: the ALB in public subnets, tasks in private ones (egress through NAT for ECR,
        # Secrets Manager, CloudWatch), the database in isolated ones.
        vpc = ec2.Vpc(
            self, "Vpc", max_azs=config.max_azs, nat_gateways=config.nat_gateways,
            subnet_configuration=[
                ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24),
                ec2.SubnetConfiguration(name="tasks", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=22),
                ec2.SubnetConfiguration(name="data", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED, cidr_mask=24),
            ],
        )  # fmt: skip
        # Artifact bytes between the tasks and S3 stay off the NAT gateways (and their per-GB charge).
        vpc.add_gateway_endpoint(
            "S3Endpoint", service=ec2.GatewayVpcEndpointAwsService.S3,
            subnets=[ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)],
        )  # fmt: skip
        if config.production and config.nat_gateways < config.max_azs:
            Annotations.of(self).add_warning_v2(
                "depot:nat-per-az", f"production with {config.nat_gateways} NAT gateway(s) for {config.max_azs} AZs: "
                "the tasks of an AZ without its own lose their egress when the other AZ fails",
            )  # fmt: skip
        alb_sg = ec2.SecurityGroup(self, "AlbSecurityGroup", vpc=vpc, description="Depot ALB: HTTP(S) from anywhere")
        tasks_sg = ec2.SecurityGroup(self, "TasksSecurityGroup", vpc=vpc, description="Depot tasks: from the ALB only")
        db_sg = ec2.SecurityGroup(
            self, "DatabaseSecurityGroup", vpc=vpc, allow_all_outbound=False,
            description="Depot database: from the tasks only",
        )  # fmt: skip
        for port in (80, 443) if config.certificate_arn else (80,):
            alb_sg.add_ingress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(port), "clients")
        tasks_sg.add_ingress_rule(alb_sg, ec2.Port.tcp(CONTAINER_PORT), "the load balancer")
        db_sg.add_ingress_rule(tasks_sg, ec2.Port.tcp(5432), "the services and the migration task")

        # Bytes: a bucket under a customer key, private, TLS only, unfinished uploads aborted.
        key = kms.Key(
            self, "ArtifactsKey", enable_key_rotation=True, removal_policy=retain,
            description="Depot artifacts (S3 SSE-KMS)",
        )  # fmt: skip
        bucket = s3.Bucket(
            self, "Artifacts", encryption=s3.BucketEncryption.KMS, encryption_key=key, bucket_key_enabled=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL, enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED, removal_policy=retain,
            # package_service deletes objects: a deleted or replaced one stays recoverable for a while.
            versioned=True,
            lifecycle_rules=[
                s3.LifecycleRule(id="abort-incomplete-multipart-uploads",
                                 abort_incomplete_multipart_upload_after=Duration.days(3)),
                s3.LifecycleRule(id="expire-noncurrent-versions", expired_object_delete_marker=True,
                                 noncurrent_version_expiration=Duration.days(config.noncurrent_version_expiration_days)),
            ],
        )  # fmt: skip

        # Metadata: PostgreSQL, encrypted, private, backed up; its credentials generated in Secrets Manager.
        database = rds.DatabaseInstance(
            self, "Database",
            engine=rds.DatabaseInstanceEngine.postgres(version=rds.PostgresEngineVersion.VER_18_1),
            instance_type=ec2.InstanceType(config.db_instance_type),
            vpc=vpc, vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED),
            security_groups=[db_sg], credentials=rds.Credentials.from_generated_secret("depot"),
            database_name="depot", storage_encrypted=True, allocated_storage=config.db_allocated_storage_gib,
            max_allocated_storage=config.db_allocated_storage_gib * 5, multi_az=config.production,
            backup_retention=Duration.days(14 if config.production else 7),
            deletion_protection=config.production,
            removal_policy=RemovalPolicy.SNAPSHOT if config.production else RemovalPolicy.DESTROY,
            publicly_accessible=False, cloudwatch_logs_exports=["postgresql"],
            ca_certificate=rds.CaCertificate.RDS_CA_RSA2048_G1,  # in the bundle the images carry (RDS_CA_BUNDLE)
        )  # fmt: skip
        assert database.secret is not None
        # Each service's own role and password (the master's stays with the migration task).
        self.database_role_secrets = {
            name: rds.DatabaseSecret(self, f"{name}DatabaseSecret", username=role)
            for name, role in DATABASE_ROLES.items()
        }
        for secret in self.database_role_secrets.values():
            secret.apply_removal_policy(retain)

        signing_key, service_token = base.signing_key, base.service_token

        cluster = ecs.Cluster(
            self, "Cluster", vpc=vpc, container_insights_v2=ecs.ContainerInsights.ENABLED,
            # ECS Exec sessions are not logged (their output may show a secret; CloudTrail records who
            # opened one, on which task, when), so the task roles need no write access to CloudWatch Logs.
            execute_command_configuration=ecs.ExecuteCommandConfiguration(logging=ecs.ExecuteCommandLogging.NONE),
        )  # fmt: skip
        alarms = sns.Topic(self, "Alarms", display_name="Depot alarms")
        if config.alarm_email:
            alarms.add_subscription(subscriptions.EmailSubscription(config.alarm_email))
        self.alarm_action = cloudwatch_actions.SnsAction(alarms)
        self._alarm_recipients(config)

        alb = elbv2.ApplicationLoadBalancer(
            self, "LoadBalancer", vpc=vpc, internet_facing=True, security_group=alb_sg,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC),
            idle_timeout=Duration.seconds(config.alb_idle_timeout_seconds), drop_invalid_header_fields=True,
        )  # fmt: skip
        self._access_logs(alb)
        not_found = elbv2.ListenerAction.fixed_response(
            404, content_type="application/json",
            message_body='{"type": "about:blank", "title": "Not Found", "status": 404, '
            '"detail": "No service serves this path."}',
        )  # fmt: skip
        if config.certificate_arn:
            if not config.public_url:
                raise ValueError("with certificate_arn, set public_url (https://<the certificate's domain>)")
            certificate = acm.Certificate.from_certificate_arn(self, "Certificate", config.certificate_arn)
            listener = alb.add_listener(
                "Https", port=443, certificates=[certificate], ssl_policy=elbv2.SslPolicy.RECOMMENDED_TLS,
                open=False,  # the default action forwards to web_service (below)
            )  # fmt: skip
            # Browsers that came once over HTTPS never try plain HTTP again for a year.
            listener.set_attribute("routing.http.response.strict_transport_security.header_value", "max-age=31536000")
            alb.add_redirect(source_port=80, target_port=443)  # port 80 serves nothing but the redirect
        else:
            listener = alb.add_listener("Http", port=80, open=False)  # default: web_service (below)
            Annotations.of(self).add_warning_v2(
                "depot:insecure-http",
                "NO HTTPS: passwords, tokens and artifacts cross the internet in clear on port 80. Give "
                "-c certificate_arn=<ACM certificate ARN> -c public_url=https://<its domain> (production refuses "
                "to deploy without them unless -c allow_insecure_http=true).",
            )  # fmt: skip
        # Metrics are for scrapers inside the network (each task's own port), never for the internet;
        # web_service serves its own at `/metrics`, which the default action would otherwise reach.
        listener.add_action(
            "MetricsNotRouted", priority=METRICS_RULE_PRIORITY, action=not_found,
            conditions=[elbv2.ListenerCondition.path_patterns(_metrics_paths(config))],
        )  # fmt: skip

        # What every container gets: settings from the environment, secrets from Secrets Manager.
        common_environment = {
            "DEPOT_ENVIRONMENT": "production",
            "DEPOT_LOG_FORMAT": "json",
            "DEPOT_DATABASE_URL": f"postgresql://depot@{database.db_instance_endpoint_address}:"
            f"{database.db_instance_endpoint_port}/depot",
            "DEPOT_S3_BUCKET": bucket.bucket_name,
            "DEPOT_S3_REGION": self.region,
            # Every connection checks the database's certificate against RDS's authorities.
            "DEPOT_DATABASE_SSL_ROOT_CERT": RDS_CA_BUNDLE,
        }
        database_password = ecs.Secret.from_secrets_manager(database.secret, "password")
        public_url = config.public_url or f"http://{alb.load_balancer_dns_name}"
        # How the services reach each other: an internal load balancer, never the internet-facing one.
        internal_url = self._internal_load_balancer(vpc, tasks_sg, not_found)
        web_sg = self._web_security_group(vpc, alb_sg)
        per_service: dict[str, dict[str, str]] = {
            "auth_service": {
                "DEPOT_REGISTRATION_OPEN": str(config.registration_open).lower(),
                "DEPOT_ADMIN_USERNAME": ADMIN_USERNAME,
            },
            "package_service": {
                "DEPOT_AUTH_JWKS_URL": f"{internal_url}/auth/.well-known/jwks.json",
                "DEPOT_AUTH_URL": internal_url,
            },
            "validator_service": {
                "DEPOT_AUTH_JWKS_URL": f"{internal_url}/auth/.well-known/jwks.json",
                "DEPOT_AUTH_URL": internal_url,
                "DEPOT_PACKAGES_URL": internal_url,
            },
        }
        # web_service gets none of common_environment's database or bucket settings: only its own.
        web_environment = {
            "DEPOT_ENVIRONMENT": "production",
            "DEPOT_LOG_FORMAT": "json",
            "DEPOT_PUBLIC_URL": public_url,  # https with a certificate: its cookies are then `Secure`
            "DEPOT_API_URL": f"{internal_url}:{WEB_API_PORT}",  # every API route (_internal_load_balancer)
        }
        for name, role_name in DATABASE_ROLES.items():
            per_service[name]["DEPOT_DATABASE_URL"] = (
                f"postgresql://{role_name}@{database.db_instance_endpoint_address}:{database.db_instance_endpoint_port}/depot"
            )
        per_service_secrets: dict[str, dict[str, ecs.Secret]] = {
            "auth_service": {
                "DEPOT_SIGNING_KEY": ecs.Secret.from_secrets_manager(signing_key),
                "DEPOT_ADMIN_PASSWORD": ecs.Secret.from_secrets_manager(base.admin_password),
            },
            "package_service": {},
            "validator_service": {"DEPOT_SERVICE_TOKEN": ecs.Secret.from_secrets_manager(service_token)},
            WEB_SERVICE: {"DEPOT_SESSION_KEY": ecs.Secret.from_secrets_manager(base.session_key)},
        }
        for name, secret in self.database_role_secrets.items():
            per_service_secrets[name]["DEPOT_DATABASE_PASSWORD"] = ecs.Secret.from_secrets_manager(secret, "password")

        self.services: dict[str, ecs.FargateService] = {}
        self.task_roles: dict[str, iam.Role] = {}
        self.log_groups: dict[str, logs.LogGroup] = {}
        self.target_groups: dict[str, elbv2.ApplicationTargetGroup] = {}
        for spec in config.services:
            repository = base.repositories[spec.name]
            role = iam.Role(
                self, f"{spec.name}TaskRole", assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
                description=f"Depot {spec.name}: what the running service may do",
            )  # fmt: skip
            self.task_roles[spec.name] = role
            task = ecs.FargateTaskDefinition(
                self, f"{spec.name}Task", cpu=spec.cpu, memory_limit_mib=spec.memory, task_role=role,
                runtime_platform=config.runtime_platform,
            )  # fmt: skip
            log_group = logs.LogGroup(
                self, f"{spec.name}Logs", log_group_name=f"/depot/{self.stack_name}/{spec.name}",
                retention=_retention(config.log_retention_days), removal_policy=retain,
            )  # fmt: skip
            self.log_groups[spec.name] = log_group
            task.add_container(
                spec.name,
                image=ecs.ContainerImage.from_ecr_repository(repository, config.image_tag),
                port_mappings=[ecs.PortMapping(container_port=CONTAINER_PORT)],
                environment={**(common_environment if spec.uses_database else web_environment),
                             **per_service.get(spec.name, {}), **self._runtime_environment(spec)},
                secrets=per_service_secrets[spec.name],  # the service's own database role, never the master
                logging=ecs.LogDrivers.aws_logs(stream_prefix=spec.name, log_group=log_group),
                stop_timeout=Duration.seconds(STOP_TIMEOUT_SECONDS), readonly_root_filesystem=True,
                # Liveness: a database or S3 that is away makes the ALB route around a task (readiness,
                # below), never ECS restart every container at once.
                health_check=ecs.HealthCheck(
                    command=["CMD", "python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request."
                             f"urlopen('http://127.0.0.1:{CONTAINER_PORT}{spec.prefix}/health', timeout=4)"
                             ".status == 200 else 1)"],
                    interval=Duration.seconds(15), timeout=Duration.seconds(5), retries=3,
                    start_period=Duration.seconds(30),
                ),
            )  # fmt: skip
            task.add_volume(name="tmp")
            task.default_container.add_mount_points(  # type: ignore[union-attr]
                ecs.MountPoint(container_path="/tmp", source_volume="tmp", read_only=False)  # noqa: S108
            )
            self._exec_volumes(task)
            service = ecs.FargateService(
                self, f"{spec.name}Service", cluster=cluster, task_definition=task,
                # No DesiredCount once running: a deploy must not reset what autoscaling chose (the
                # scalable target's minimum brings a new or unpaused service up to min_tasks).
                desired_count=0 if config.paused else None, enable_execute_command=config.ecs_exec,
                min_healthy_percent=100, max_healthy_percent=200,
                circuit_breaker=ecs.DeploymentCircuitBreaker(enable=True, rollback=True),
                vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
                # web_service: a group of its own (from the ALB; to the APIs' listener), never the tasks'
                # group that reaches the database.
                security_groups=[web_sg] if spec.name == WEB_SERVICE else [tasks_sg, *self._caller_groups(spec)],
                assign_public_ip=False, health_check_grace_period=Duration.seconds(60),
            )  # fmt: skip
            self.services[spec.name] = service
            # Without priority and conditions (web_service), the target group is the listener's default action.
            routed = (
                {"priority": spec.priority, "conditions": [elbv2.ListenerCondition.path_patterns([f"{spec.prefix}*"])]}
                if spec.prefix
                else {}
            )
            target_group = listener.add_targets(
                f"{spec.name}Targets", port=CONTAINER_PORT, protocol=elbv2.ApplicationProtocol.HTTP, targets=[service],
                **routed,  # type: ignore[arg-type]
                deregistration_delay=Duration.seconds(config.drain_seconds(spec.name)),
                health_check=elbv2.HealthCheck(
                    path=f"{spec.prefix}/health/ready", healthy_http_codes="200", interval=Duration.seconds(15),
                    timeout=Duration.seconds(5), healthy_threshold_count=2, unhealthy_threshold_count=3,
                ),
            )  # fmt: skip
            self.target_groups[spec.name] = target_group
            if not spec.prefix:
                # As a default action the target group is also in the service's DependsOn, next to its Ref.
                service.node.default_child.add_metadata(  # type: ignore[union-attr]
                    "cfn-lint", {"config": {"ignore_checks": ["W3005"]}}
                )
            scaling = service.auto_scale_task_count(
                min_capacity=0 if config.paused else spec.min_tasks, max_capacity=spec.max_tasks
            )
            # The validator scales in on its queue alone (below): CPU and requests only add tasks.
            queue_driven = spec.name == "validator_service"
            scaling.scale_on_cpu_utilization(f"{spec.name}Cpu", target_utilization_percent=60,
                                             disable_scale_in=queue_driven)  # fmt: skip
            scaling.scale_on_request_count(f"{spec.name}Requests", requests_per_target=500, target_group=target_group,
                                           disable_scale_in=queue_driven)  # fmt: skip
            self._validator_scaling(spec, scaling)
            self._service_alarms(spec, service, target_group)
            self._route_internally(spec, service)

        # Least privilege: auth_service has no S3 at all; package_service reads and writes the
        # versions/ prefix (and lists the bucket's uploads for its janitor); the validator reads.
        bucket.grant_read_write(self.task_roles["package_service"], "versions/*")
        self.task_roles["package_service"].add_to_policy(
            iam.PolicyStatement(
                actions=["s3:ListBucket", "s3:ListBucketMultipartUploads"], resources=[bucket.bucket_arn],
            )
        )  # fmt: skip
        bucket.grant_read(self.task_roles["validator_service"], "versions/*")
        self._task_protection(cluster, self.task_roles["validator_service"])
        # Versions a delete leaves behind are for recovery: package_service may not remove them.
        self.task_roles["package_service"].add_to_policy(
            iam.PolicyStatement(
                effect=iam.Effect.DENY, actions=["s3:DeleteObjectVersion", "s3:PutBucketVersioning",
                                                 "s3:PutLifecycleConfiguration"],
                resources=[bucket.bucket_arn, bucket.arn_for_objects("*")],
            )
        )  # fmt: skip

        self._migration_task(cluster, common_environment, database_password, signing_key, service_token, vpc)
        self._platform_alarms(alb, database)
        self._database_connection_alarm(database)
        self._request_latency()
        self._dashboard(alb, database)
        self._request_query()
        for name, value in {
            "LoadBalancerUrl": public_url,
            "InternalLoadBalancerUrl": internal_url,
            "ClusterName": cluster.cluster_name,
            "MigrationTaskDefinition": self.migration_task.task_definition_arn,
            "TaskSubnets": ",".join(s.subnet_id for s in vpc.private_subnets),
            "TaskSecurityGroup": tasks_sg.security_group_id,
            "ImageTag": config.image_tag,
            "AlarmTopic": alarms.topic_arn,
            "DashboardName": self.stack_name,  # the dashboard is named after the stack
            "AccessLogBucket": self.access_log_bucket.bucket_name,
            "Environment": config.environment,  # deploy.sh: production snapshots the database before migrating
            "DatabaseInstanceId": database.instance_identifier,
            **{f"{name.title().replace('_', '')}ServiceName": svc.service_name for name, svc in self.services.items()},
        }.items():
            CfnOutput(self, name, value=value)

    def _migration_task(
        self, cluster: ecs.Cluster, environment: dict[str, str], database_password: ecs.Secret,
        signing_key: secretsmanager.Secret, service_token: secretsmanager.Secret, vpc: ec2.Vpc,
    ) -> None:  # fmt: skip
        """A one-off task (the `migrate` image): every schema, then the service account's token into its secret."""
        repository = self.base.repositories["migrate"]
        role = iam.Role(self, "MigrateTaskRole", assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"))
        service_token.grant_read(role)
        service_token.grant_write(role)
        task = ecs.FargateTaskDefinition(
            self, "MigrateTask", cpu=256, memory_limit_mib=512, task_role=role,
            runtime_platform=self.config.runtime_platform,
        )  # fmt: skip
        task.add_container(
            "migrate",
            image=ecs.ContainerImage.from_ecr_repository(repository, self.config.migrate_image_tag),
            command=["sh", "-c", "python -m common.migrations upgrade && python -m auth_service.cli service-token "
                     f"{SERVICE_ACCOUNT} --secret-id \"$DEPOT_SERVICE_TOKEN_SECRET_ID\""],
            environment={**environment, "DEPOT_SERVICE_TOKEN_SECRET_ID": service_token.secret_arn,
                         "DEPOT_DB_POOL_SIZE": str(MIGRATION_POOL[0]), "DEPOT_DB_MAX_OVERFLOW": str(MIGRATION_POOL[1])},
            secrets={"DEPOT_DATABASE_PASSWORD": database_password,
                     "DEPOT_SIGNING_KEY": ecs.Secret.from_secrets_manager(signing_key),
                     # The services' roles: the migrations create them and set these passwords.
                     **{f"DEPOT_{name.upper()}_DATABASE_PASSWORD": ecs.Secret.from_secrets_manager(secret, "password")
                        for name, secret in self.database_role_secrets.items()}},
            logging=ecs.LogDrivers.aws_logs(
                stream_prefix="migrate",
                log_group=logs.LogGroup(
                    self, "MigrateLogs", log_group_name=f"/depot/{self.stack_name}/migrate",
                    retention=_retention(self.config.log_retention_days),
                    removal_policy=RemovalPolicy.DESTROY,
                ),
            ),
        )  # fmt: skip
        self.migration_task = task

    def _internal_load_balancer(
        self, vpc: ec2.Vpc, tasks_sg: ec2.SecurityGroup, not_found: elbv2.ListenerAction
    ) -> str:  # fmt: skip
        """An internal ALB for the calls services make to each other (JWKS, token exchange, users, access lists).

        Only the services that call others (`INTERNAL_CALLERS`, marked by a security group of their
        own) reach it, and it routes only the paths they call (`INTERNAL_ROUTES`); inside the VPC it
        speaks HTTP. Returns its URL.
        """
        vpc_private = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)
        self.internal_callers_sg = ec2.SecurityGroup(
            self, "InternalCallersSecurityGroup", vpc=vpc, allow_all_outbound=False,
            description="Depot services that call other services (through the internal load balancer)",
        )  # fmt: skip
        internal_sg = ec2.SecurityGroup(
            self, "InternalAlbSecurityGroup", vpc=vpc, allow_all_outbound=False,
            description="Depot internal ALB: from the calling services only, to the tasks",
        )  # fmt: skip
        internal_sg.add_ingress_rule(self.internal_callers_sg, ec2.Port.tcp(80), "services that call others")
        self.internal_callers_sg.add_egress_rule(internal_sg, ec2.Port.tcp(80), "the internal load balancer")
        internal_sg.add_egress_rule(tasks_sg, ec2.Port.tcp(CONTAINER_PORT), "the services it routes to")
        tasks_sg.add_ingress_rule(internal_sg, ec2.Port.tcp(CONTAINER_PORT), "the internal load balancer")
        internal = elbv2.ApplicationLoadBalancer(
            self, "InternalLoadBalancer", vpc=vpc, internet_facing=False, security_group=internal_sg,
            vpc_subnets=vpc_private, drop_invalid_header_fields=True,
        )  # fmt: skip
        self.internal_listener = internal.add_listener("Http", port=80, default_action=not_found, open=False)
        # web_service calls every user-facing API route (sign-in, search, uploads' reports, tokens,
        # admin), with the user's own token. It does so here rather than through the public URL:
        # no hairpin out of the NAT gateways and back in through the internet (cost, latency, the
        # whole site down with one NAT gateway), and in a staging deploy without a certificate the
        # users' tokens do not cross the internet a second time in clear. It gets a listener of its
        # own (WEB_API_PORT) that routes the three prefixes whole, so that the port-80 listener keeps
        # routing only what package_service and validator_service call (INTERNAL_ROUTES), and only
        # web_service's security group reaches it. Metrics stay unrouted here too.
        self.web_callers_sg = ec2.SecurityGroup(
            self, "WebSecurityGroup", vpc=vpc, allow_all_outbound=False,
            description="Depot web_service tasks: from the ALB; to the internal API listener and HTTPS",
        )  # fmt: skip
        internal_sg.add_ingress_rule(self.web_callers_sg, ec2.Port.tcp(WEB_API_PORT), "web_service")
        self.web_callers_sg.add_egress_rule(internal_sg, ec2.Port.tcp(WEB_API_PORT), "the APIs (internal balancer)")
        # The task's own ENI pulls the image and reads its secret (ECR, S3, Secrets Manager, Logs over NAT).
        self.web_callers_sg.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "AWS APIs (ECR, Secrets, Logs)")
        self.web_api_listener = internal.add_listener(
            "WebApis", port=WEB_API_PORT, protocol=elbv2.ApplicationProtocol.HTTP, default_action=not_found,
            open=False,
        )  # fmt: skip
        self.web_api_listener.add_action(
            "WebMetricsNotRouted", priority=METRICS_RULE_PRIORITY, action=not_found,
            conditions=[elbv2.ListenerCondition.path_patterns(_metrics_paths(self.config))],
        )  # fmt: skip
        return f"http://{internal.load_balancer_dns_name}"

    def _web_security_group(self, vpc: ec2.Vpc, alb_sg: ec2.SecurityGroup) -> ec2.SecurityGroup:
        """web_service's tasks: the public balancer reaches them; they reach the APIs' listener (no database)."""
        self.web_callers_sg.add_ingress_rule(alb_sg, ec2.Port.tcp(CONTAINER_PORT), "the load balancer")
        return self.web_callers_sg

    def _caller_groups(self, spec: ServiceSpec) -> list[ec2.ISecurityGroup]:
        """The security group that lets a service call the internal load balancer, for those that call others."""
        return [self.internal_callers_sg] if spec.name in INTERNAL_CALLERS else []

    def _route_internally(self, spec: ServiceSpec, service: ecs.FargateService) -> None:
        """Put `service` behind the internal load balancer for the paths others call."""
        if spec.prefix:  # an API: web_service calls all of it, on its own listener
            self.web_api_listener.add_targets(
                f"{spec.name}WebTargets", priority=spec.priority, port=CONTAINER_PORT,
                protocol=elbv2.ApplicationProtocol.HTTP,
                conditions=[elbv2.ListenerCondition.path_patterns([f"{spec.prefix}*"])], targets=[service],
                deregistration_delay=Duration.seconds(self.config.drain_seconds(spec.name)),
                health_check=elbv2.HealthCheck(
                    path=f"{spec.prefix}/health/ready", healthy_http_codes="200", interval=Duration.seconds(15),
                    timeout=Duration.seconds(5), healthy_threshold_count=2, unhealthy_threshold_count=3,
                ),
            )  # fmt: skip
        paths = INTERNAL_ROUTES.get(spec.name)
        if not paths:
            return
        self.internal_listener.add_targets(
            f"{spec.name}InternalTargets", priority=spec.priority, port=CONTAINER_PORT,
            protocol=elbv2.ApplicationProtocol.HTTP,
            conditions=[elbv2.ListenerCondition.path_patterns(list(paths))], targets=[service],
            deregistration_delay=Duration.seconds(30),
            health_check=elbv2.HealthCheck(
                path=f"{spec.prefix}/health/ready", healthy_http_codes="200", interval=Duration.seconds(15),
                timeout=Duration.seconds(5), healthy_threshold_count=2, unhealthy_threshold_count=3,
            ),
        )  # fmt: skip

    def _alarm(self, name: str, metric: cloudwatch.IMetric, threshold: float, description: str, *,
               comparison: cloudwatch.ComparisonOperator = cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
               periods: int = 3,
               missing: cloudwatch.TreatMissingData = cloudwatch.TreatMissingData.NOT_BREACHING) -> None:  # fmt: skip
        alarm = cloudwatch.Alarm(
            self, name, metric=metric, threshold=threshold, evaluation_periods=periods, comparison_operator=comparison,
            treat_missing_data=missing, alarm_description=description,
            # Paused (the first deploy, before migrating), no validator runs to publish the queue's metrics.
            actions_enabled=not (self.config.paused and missing == cloudwatch.TreatMissingData.BREACHING),
        )  # fmt: skip
        alarm.add_alarm_action(self.alarm_action)

    def _service_alarms(
        self, spec: ServiceSpec, service: ecs.FargateService, target_group: elbv2.ApplicationTargetGroup
    ) -> None:
        metrics = target_group.metrics
        self._alarm(f"{spec.name}Target5xx", metrics.http_code_target(elbv2.HttpCodeTarget.TARGET_5XX_COUNT,
                    period=Duration.minutes(1), statistic="Sum"), 10, f"{spec.name} answers 5xx")  # fmt: skip
        if spec.name not in TRANSFER_SERVICES:  # where artifacts stream, the service's own metric (_request_latency)
            self._alarm(f"{spec.name}ResponseTime", metrics.target_response_time(period=Duration.minutes(1),
                        statistic="p99"), 2.0, f"{spec.name} p99 response time over 2 s")  # fmt: skip
        self._alarm(f"{spec.name}Unhealthy", metrics.unhealthy_host_count(period=Duration.minutes(1),
                    statistic="Maximum"), 0, f"{spec.name} has unhealthy targets", periods=2)  # fmt: skip
        self._alarm(f"{spec.name}Cpu", service.metric_cpu_utilization(period=Duration.minutes(5)), 85,
                    f"{spec.name} CPU over 85%")  # fmt: skip
        self._alarm(f"{spec.name}Memory", service.metric_memory_utilization(period=Duration.minutes(5)), 85,
                    f"{spec.name} memory over 85%")  # fmt: skip

    def _platform_alarms(self, alb: elbv2.ApplicationLoadBalancer, database: rds.DatabaseInstance) -> None:
        self._alarm("Alb5xx", alb.metrics.http_code_elb(elbv2.HttpCodeElb.ELB_5XX_COUNT, period=Duration.minutes(1),
                    statistic="Sum"), 10, "the load balancer answers 5xx (no healthy target?)")  # fmt: skip
        self._alarm("DatabaseCpu", database.metric_cpu_utilization(period=Duration.minutes(5)), 80,
                    "database CPU over 80%")  # fmt: skip
        self._alarm("DatabaseFreeStorage", database.metric_free_storage_space(period=Duration.minutes(5)),
                    2 * 1024**3, "database free storage under 2 GiB",
                    comparison=cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD)  # fmt: skip
        # validator_service publishes the queues' depth every minute: no data means no validator runs.
        for queue in ("validation", "verdicts"):
            self._alarm(f"DeadJobs{queue.title()}", _queue_metric("DeadJobs", queue, "Maximum", minutes=5), 0,
                        f"dead jobs in the {queue} queue (a validation gave up), or no validator publishes "
                        "the queue's metrics", periods=1, missing=cloudwatch.TreatMissingData.BREACHING)  # fmt: skip
        self._alarm("ValidationBacklog", _queue_metric("QueuedJobs", "validation", "Maximum", minutes=5), 50,
                    "over 50 validation jobs waiting for 15 minutes (validators stuck or too few), or no "
                    "validator publishes the queue's metrics",
                    missing=cloudwatch.TreatMissingData.BREACHING)  # fmt: skip

    # Runtime: how tasks start, stop, scale and are watched (issue 17's runtime items).

    def _runtime_environment(self, spec: ServiceSpec) -> dict[str, str]:
        """Settings derived from the stack's own values, so that they never drift apart."""
        uvicorn = {
            # uvicorn reads these (the image's command line names neither): keep-alive above the ALB's
            # idle timeout, or the ALB reuses a connection the task just closed (a 502); in-flight
            # requests may finish within ECS's stop timeout.
            "UVICORN_TIMEOUT_KEEP_ALIVE": str(self.config.keepalive_seconds),
            "UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN": str(GRACEFUL_SHUTDOWN_SECONDS),
        }
        if not spec.uses_database:
            return uvicorn
        # What connection_budget planned for.
        return {
            **uvicorn,
            "DEPOT_DB_POOL_SIZE": str(spec.db_pool_size),
            "DEPOT_DB_MAX_OVERFLOW": str(spec.db_max_overflow),
        }

    def _alarm_recipients(self, config: DeployConfig) -> None:
        """Alarms go to the SNS topic; without `alarm_email` nobody receives them unless told."""
        if config.alarm_email:
            return
        unheard = "no alarm_email: the alarms go to the SNS topic (output AlarmTopic), which nobody receives"
        if config.production and not config.allow_no_alarm_email:
            raise ValueError(
                f"{unheard}. Production needs alarm_email=<address>, or allow_no_alarm_email=true when the "
                "topic is subscribed otherwise (a pager, a chat integration)"
            )
        Annotations.of(self).add_warning_v2("depot:no-alarm-email", f"{unheard} until something subscribes to it")

    def _access_logs(self, alb: elbv2.ApplicationLoadBalancer) -> None:
        """The ALB's access logs in a bucket of their own: private, TLS only, expiring."""
        bucket = s3.Bucket(
            self, "AccessLogs", encryption=s3.BucketEncryption.S3_MANAGED,  # the only encryption ALB logs support
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL, enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            removal_policy=RemovalPolicy.RETAIN,  # a record of who did what: kept by `make destroy`
            lifecycle_rules=[s3.LifecycleRule(
                id="expire-access-logs", expiration=Duration.days(self.config.access_log_retention_days),
                abort_incomplete_multipart_upload_after=Duration.days(1),
            )],
        )  # fmt: skip
        # What `alb.log_access_logs` does, but also for a synth without a region (`make synth`, the
        # tests): the log delivery principal of regions opened since August 2022, and the regional
        # Elastic Load Balancing account of older ones, from a mapping of every region (regional_fact).
        elb_account = self.regional_fact(region_info.FactName.ELBV2_ACCOUNT, self.account)
        bucket.add_to_resource_policy(
            iam.PolicyStatement(
                actions=["s3:PutObject"], resources=[bucket.arn_for_objects(f"alb/AWSLogs/{self.account}/*")],
                principals=[iam.ServicePrincipal("logdelivery.elasticloadbalancing.amazonaws.com"),
                            iam.AccountPrincipal(elb_account)],
            )
        )  # fmt: skip
        for key, value in {"enabled": "true", "bucket": bucket.bucket_name, "prefix": "alb"}.items():
            alb.set_attribute(f"access_logs.s3.{key}", value)
        assert bucket.policy is not None
        alb.node.add_dependency(bucket.policy)  # the ALB checks that it may write there when logging is enabled
        self.access_log_bucket = bucket

    def _validator_scaling(self, spec: ServiceSpec, scaling: ecs.ScalableTaskCount) -> None:
        """The validator's: out on jobs waiting; in only when no job is queued or running anywhere.

        Tasks that run a job are also protected from scale-in by the validator itself (ECS task
        scale-in protection, validator_service.protection), so neither this policy nor a lagging
        metric stops a validation half way.
        """
        if spec.name != "validator_service":
            return
        scaling.scale_on_metric(
            "ValidationBacklog", metric=_queue_metric("QueuedJobs", "validation", "Maximum"),
            scaling_steps=[
                appscaling.ScalingInterval(upper=5, change=0),
                appscaling.ScalingInterval(lower=5, change=1),
                appscaling.ScalingInterval(lower=50, change=3),
            ],
            adjustment_type=appscaling.AdjustmentType.CHANGE_IN_CAPACITY,
        )  # fmt: skip
        busy = cloudwatch.MathExpression(
            expression="queued + running", label="validation jobs queued or running", period=Duration.minutes(1),
            using_metrics={"queued": _queue_metric("QueuedJobs", "validation", "Maximum"),
                           "running": _queue_metric("RunningJobs", "validation", "Maximum")},
        )  # fmt: skip
        scaling.scale_on_metric(
            "ValidationIdle", metric=busy, evaluation_periods=5, cooldown=Duration.minutes(5),
            scaling_steps=[
                appscaling.ScalingInterval(upper=0, change=-1),  # nothing queued or running for 5 minutes
                appscaling.ScalingInterval(lower=0, change=0),
            ],
            adjustment_type=appscaling.AdjustmentType.CHANGE_IN_CAPACITY,
        )  # fmt: skip

    def _task_protection(self, cluster: ecs.Cluster, role: iam.Role) -> None:
        """The validator's tasks may protect themselves: the ECS agent's endpoint acts with the task's role."""
        tasks = self.format_arn(service="ecs", resource="task", resource_name=f"{cluster.cluster_name}/*")
        role.add_to_policy(
            iam.PolicyStatement(actions=["ecs:UpdateTaskProtection", "ecs:GetTaskProtection"], resources=[tasks])
        )

    def _database_connection_alarm(self, database: rds.DatabaseInstance) -> None:
        budget = self.connection_budget
        self._alarm(
            "DatabaseConnections", database.metric_database_connections(period=Duration.minutes(1),
                                                                        statistic="Maximum"),
            budget.usable, f"over {budget.usable} database connections: more than the deployment plans for "
            f"({budget.total} at most); the database accepts {budget.max_connections}",
        )  # fmt: skip

    def _request_latency(self) -> None:
        """`Depot/RequestLatency` by `Service`: the access log's duration of requests that move no artifact.

        A streamed upload or a relayed download lasts as long as the artifact and the client's link
        make it (`"transfer": true` in its access line); the ALB's TargetResponseTime counts an
        upload's whole body. Where artifacts stream, the latency alarm watches this metric instead.
        """
        for name, log_group in self.log_groups.items():
            log_group.add_metric_filter(
                f"{name}RequestLatency", metric_namespace=METRICS_NAMESPACE, metric_name="RequestLatency",
                metric_value="$.duration_ms", unit=cloudwatch.Unit.MILLISECONDS, dimensions={"Service": "$.service"},
                filter_pattern=logs.FilterPattern.all(
                    logs.FilterPattern.string_value("$.logger", "=", "depot.access"),
                    logs.FilterPattern.string_value("$.event", "=", "request"),
                    logs.FilterPattern.boolean_value("$.transfer", False),
                    logs.FilterPattern.exists("$.duration_ms"),
                ),
            )  # fmt: skip
            if name in TRANSFER_SERVICES:
                self._alarm(f"{name}RequestLatency", _request_latency_metric(name, "p99"), 2000,
                            f"{name} p99 over 2 s for requests that move no artifact")  # fmt: skip

    def _dashboard(self, alb: elbv2.ApplicationLoadBalancer, database: rds.DatabaseInstance) -> None:
        """One page: traffic, errors, latency, the queues, the database's connections, each service's CPU and memory."""
        minute = Duration.minutes(1)
        names = list(self.services)
        target = {name: self.target_groups[name].metrics for name in names}
        budget = self.connection_budget
        dashboard = cloudwatch.Dashboard(self, "Dashboard", dashboard_name=self.stack_name)
        dashboard.add_widgets(
            cloudwatch.GraphWidget(title="Requests (per minute)", width=12, left=[
                target[n].request_count(period=minute, statistic="Sum", label=n) for n in names]),
            cloudwatch.GraphWidget(title="5xx (per minute)", width=12, left=[
                *(target[n].http_code_target(elbv2.HttpCodeTarget.TARGET_5XX_COUNT, period=minute, statistic="Sum",
                                             label=f"{n}") for n in names),
                alb.metrics.http_code_elb(elbv2.HttpCodeElb.ELB_5XX_COUNT, period=minute, statistic="Sum",
                                          label="load balancer (no healthy target?)")]),
        )  # fmt: skip
        dashboard.add_widgets(
            cloudwatch.GraphWidget(title="Latency p99, ms (requests that move no artifact)", width=12, left=[
                _request_latency_metric(n, "p99") for n in names]),
            cloudwatch.GraphWidget(title="ALB target response time p99, s (uploads included)", width=12, left=[
                target[n].target_response_time(period=minute, statistic="p99", label=n) for n in names]),
        )  # fmt: skip
        dashboard.add_widgets(
            cloudwatch.GraphWidget(title="Queues", width=12, left=[
                _queue_metric(metric, queue, "Maximum").with_(label=f"{queue} {metric}")
                for queue in ("validation", "verdicts") for metric in ("QueuedJobs", "RunningJobs", "DeadJobs")]),
            cloudwatch.GraphWidget(
                title="Database connections", width=12,
                left=[database.metric_database_connections(period=minute, statistic="Maximum", label="connections")],
                left_annotations=[
                    cloudwatch.HorizontalAnnotation(value=budget.usable, label="alarm: more than planned"),
                    cloudwatch.HorizontalAnnotation(value=budget.max_connections, label="max_connections"),
                ],
            ),
        )  # fmt: skip
        dashboard.add_widgets(
            cloudwatch.GraphWidget(title="CPU %", width=12, left=[
                self.services[n].metric_cpu_utilization(period=minute, label=n) for n in names]),
            cloudwatch.GraphWidget(title="Memory %", width=12, left=[
                self.services[n].metric_memory_utilization(period=minute, label=n) for n in names]),
        )  # fmt: skip
        self.dashboard = dashboard

    def _request_query(self) -> None:
        """A saved Logs Insights query: one request's lines in every service, in order (X-Request-ID travels)."""
        logs.QueryDefinition(
            self, "FollowRequest", query_definition_name=f"{self.stack_name}/follow-a-request",
            query_string=logs.QueryString(
                fields=["@timestamp", "service", "level", "event", "method", "route", "status", "duration_ms",
                        "@message"],
                filter_statements=['request_id = "paste-the-X-Request-ID-here"'],
                sort="@timestamp asc", limit=1000,
            ),
            log_groups=list(self.log_groups.values()),
        )  # fmt: skip

    def _exec_volumes(self, task: ecs.FargateTaskDefinition) -> None:
        """With ECS Exec, writable volumes where its agent writes (/var/lib/amazon, /var/log/amazon):
        it runs while the root file system stays read-only."""
        if not self.config.ecs_exec:
            return
        for name, path in (("ecs-exec-lib", "/var/lib/amazon"), ("ecs-exec-log", "/var/log/amazon")):
            task.add_volume(name=name)
            task.default_container.add_mount_points(  # type: ignore[union-attr]
                ecs.MountPoint(container_path=path, source_volume=name, read_only=False)
            )


def _metrics_paths(config: DeployConfig) -> list[str]:
    """Every service's Prometheus endpoint: the APIs' under their prefix, web_service's at the root."""
    return [f"{spec.prefix}/metrics" for spec in config.services]


def _request_latency_metric(service: str, statistic: str) -> cloudwatch.Metric:
    return cloudwatch.Metric(
        namespace=METRICS_NAMESPACE, metric_name="RequestLatency", dimensions_map={"Service": service},
        statistic=statistic, period=Duration.minutes(1), label=service,
    )  # fmt: skip


def _cpu_architecture(name: str) -> str:
    if name not in IMAGE_PLATFORMS:
        raise ValueError(f"cpu_architecture must be one of {sorted(IMAGE_PLATFORMS)}, not {name!r}")
    return name


def _empty_secret(scope: Construct, construct_id: str, description: str) -> secretsmanager.Secret:
    """A retained secret that CloudFormation creates without a value, for deploy steps to fill.

    The CDK's default (`GenerateSecretString: {}`) would fill it with a random password: a value
    that looks set but is no key or token, so a step that fills only empty secrets would keep it,
    and a task would start with it. Without a value, a task that needs the secret cannot start
    (ECS reports the missing AWSCURRENT version) until the step has written it, and CloudFormation
    never writes it again on a later update.
    """
    secret = secretsmanager.Secret(scope, construct_id, description=description, removal_policy=RemovalPolicy.RETAIN)
    resource = secret.node.default_child
    assert isinstance(resource, secretsmanager.CfnSecret)
    resource.add_property_deletion_override("GenerateSecretString")
    return secret


def _queue_metric(name: str, queue: str, statistic: str, *, minutes: int = 1) -> cloudwatch.Metric:
    return cloudwatch.Metric(
        namespace=METRICS_NAMESPACE, metric_name=name, dimensions_map={"Queue": queue},
        statistic=statistic, period=Duration.minutes(minutes),
    )  # fmt: skip


def _retention(days: int) -> logs.RetentionDays:
    """The shortest of the usual CloudWatch Logs retentions that keeps at least `days`."""
    choices = [
        (7, logs.RetentionDays.ONE_WEEK), (14, logs.RetentionDays.TWO_WEEKS), (30, logs.RetentionDays.ONE_MONTH),
        (90, logs.RetentionDays.THREE_MONTHS), (180, logs.RetentionDays.SIX_MONTHS), (365, logs.RetentionDays.ONE_YEAR),
    ]  # fmt: skip
    return next((retention for limit, retention in choices if limit >= days), logs.RetentionDays.ONE_YEAR)
