"""Depot on AWS: three Fargate services behind one ALB, RDS PostgreSQL, S3 with a customer KMS key.

The shape follows ../shared/docs/ARCHITECTURE.md: one ALB with a listener rule per service prefix
(the prefix is not stripped), one ECS service per app in private subnets, one database with a
schema per service, one bucket, the queues in PostgreSQL. Sizes come from the CDK context
(cdk.json, or `-c name=value`), so that a deployment chooses them without code changes.
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
# The tasks' CPU architecture (context `cpu_architecture`) and the `docker build --platform` it needs.
IMAGE_PLATFORMS = {"x86_64": "linux/amd64", "arm64": "linux/arm64"}


@dataclass(frozen=True)
class ServiceSpec:
    """One ECS service: its image target, path prefix, listener rule priority and sizing."""

    name: str  # also the Dockerfile target and the ECR repository's suffix
    prefix: str
    priority: int
    cpu: int
    memory: int
    min_tasks: int
    max_tasks: int


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
            db_instance_type=str(get("db_instance_type", "t4g.micro")),
            db_allocated_storage_gib=int(get("db_allocated_storage_gib", 20)),
            log_retention_days=int(get("log_retention_days", 30)),
            alb_idle_timeout_seconds=int(get("alb_idle_timeout_seconds", 300)),
            allow_insecure_http=str(get("allow_insecure_http", "false")).lower() == "true",
            registration_open=str(get("registration_open", "false")).lower() == "true",
            noncurrent_version_expiration_days=int(get("noncurrent_version_expiration_days", 30)),
            cpu_architecture=_cpu_architecture(str(get("cpu_architecture", "x86_64"))),
        )


IMAGES = ("auth_service", "package_service", "validator_service", "migrate")


class DepotBaseStack(Stack):
    """What must exist before the services can start: the image repositories and three secrets.

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
        for image, repository in self.repositories.items():
            CfnOutput(self, f"{image.title().replace('_', '')}RepositoryUri", value=repository.repository_uri)
        CfnOutput(self, "SigningKeySecret", value=self.signing_key.secret_arn)
        CfnOutput(self, "ServiceTokenSecret", value=self.service_token.secret_arn)
        CfnOutput(self, "AdminPasswordSecret", value=self.admin_password.secret_arn)
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
            self, "Cluster", vpc=vpc, container_insights_v2=ecs.ContainerInsights.ENABLED
        )  # fmt: skip
        alarms = sns.Topic(self, "Alarms", display_name="Depot alarms")
        if config.alarm_email:
            alarms.add_subscription(subscriptions.EmailSubscription(config.alarm_email))
        self.alarm_action = cloudwatch_actions.SnsAction(alarms)

        alb = elbv2.ApplicationLoadBalancer(
            self, "LoadBalancer", vpc=vpc, internet_facing=True, security_group=alb_sg,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC),
            idle_timeout=Duration.seconds(config.alb_idle_timeout_seconds), drop_invalid_header_fields=True,
        )  # fmt: skip
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
                default_action=not_found, open=False,
            )  # fmt: skip
            # Browsers that came once over HTTPS never try plain HTTP again for a year.
            listener.set_attribute("routing.http.response.strict_transport_security.header_value", "max-age=31536000")
            alb.add_redirect(source_port=80, target_port=443)  # port 80 serves nothing but the redirect
        else:
            listener = alb.add_listener("Http", port=80, default_action=not_found, open=False)
            Annotations.of(self).add_warning_v2(
                "depot:insecure-http",
                "NO HTTPS: passwords, tokens and artifacts cross the internet in clear on port 80. Give "
                "-c certificate_arn=<ACM certificate ARN> -c public_url=https://<its domain> (production refuses "
                "to deploy without them unless -c allow_insecure_http=true).",
            )  # fmt: skip
        # Metrics are for scrapers inside the network (each task's own port), never for the internet.
        listener.add_action(
            "MetricsNotRouted", priority=METRICS_RULE_PRIORITY, action=not_found,
            conditions=[elbv2.ListenerCondition.path_patterns([f"{spec.prefix}/metrics" for spec in config.services])],
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
        }
        for name, secret in self.database_role_secrets.items():
            per_service_secrets[name]["DEPOT_DATABASE_PASSWORD"] = ecs.Secret.from_secrets_manager(secret, "password")

        self.services: dict[str, ecs.FargateService] = {}
        self.task_roles: dict[str, iam.Role] = {}
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
            task.add_container(
                spec.name,
                image=ecs.ContainerImage.from_ecr_repository(repository, config.image_tag),
                port_mappings=[ecs.PortMapping(container_port=CONTAINER_PORT)],
                environment={**common_environment, **per_service[spec.name]},
                secrets=per_service_secrets[spec.name],  # the service's own database role, never the master
                logging=ecs.LogDrivers.aws_logs(stream_prefix=spec.name, log_group=log_group),
                stop_timeout=Duration.seconds(30), readonly_root_filesystem=True,
                health_check=ecs.HealthCheck(
                    command=["CMD", "python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request."
                             f"urlopen('http://127.0.0.1:{CONTAINER_PORT}{spec.prefix}/health/ready', timeout=4)"
                             ".status == 200 else 1)"],
                    interval=Duration.seconds(15), timeout=Duration.seconds(5), retries=3,
                    start_period=Duration.seconds(30),
                ),
            )  # fmt: skip
            task.add_volume(name="tmp")
            task.default_container.add_mount_points(  # type: ignore[union-attr]
                ecs.MountPoint(container_path="/tmp", source_volume="tmp", read_only=False)  # noqa: S108
            )
            service = ecs.FargateService(
                self, f"{spec.name}Service", cluster=cluster, task_definition=task,
                desired_count=0 if config.paused else spec.min_tasks,
                min_healthy_percent=100, max_healthy_percent=200,
                circuit_breaker=ecs.DeploymentCircuitBreaker(enable=True, rollback=True),
                vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
                security_groups=[tasks_sg, *self._caller_groups(spec)],
                assign_public_ip=False, health_check_grace_period=Duration.seconds(60),
            )  # fmt: skip
            self.services[spec.name] = service
            target_group = listener.add_targets(
                f"{spec.name}Targets", priority=spec.priority, port=CONTAINER_PORT,
                protocol=elbv2.ApplicationProtocol.HTTP,
                conditions=[elbv2.ListenerCondition.path_patterns([f"{spec.prefix}*"])], targets=[service],
                deregistration_delay=Duration.seconds(30),
                health_check=elbv2.HealthCheck(
                    path=f"{spec.prefix}/health/ready", healthy_http_codes="200", interval=Duration.seconds(15),
                    timeout=Duration.seconds(5), healthy_threshold_count=2, unhealthy_threshold_count=3,
                ),
            )  # fmt: skip
            scaling = service.auto_scale_task_count(
                min_capacity=0 if config.paused else spec.min_tasks, max_capacity=spec.max_tasks
            )
            scaling.scale_on_cpu_utilization(f"{spec.name}Cpu", target_utilization_percent=60)
            scaling.scale_on_request_count(f"{spec.name}Requests", requests_per_target=500, target_group=target_group)
            if spec.name == "validator_service":
                scaling.scale_on_metric(
                    "ValidationBacklog", metric=_queue_metric("QueuedJobs", "validation", "Maximum"),
                    scaling_steps=[
                        appscaling.ScalingInterval(upper=1, change=-1),  # an empty queue: one task fewer
                        appscaling.ScalingInterval(lower=5, change=1),
                        appscaling.ScalingInterval(lower=50, change=3),
                    ],
                    adjustment_type=appscaling.AdjustmentType.CHANGE_IN_CAPACITY,
                )  # fmt: skip
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
        for name, value in {
            "LoadBalancerUrl": public_url,
            "InternalLoadBalancerUrl": internal_url,
            "ClusterName": cluster.cluster_name,
            "MigrationTaskDefinition": self.migration_task.task_definition_arn,
            "TaskSubnets": ",".join(s.subnet_id for s in vpc.private_subnets),
            "TaskSecurityGroup": tasks_sg.security_group_id,
            "ImageTag": config.image_tag,
            "AlarmTopic": alarms.topic_arn,
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
            environment={**environment, "DEPOT_SERVICE_TOKEN_SECRET_ID": service_token.secret_arn},
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
        return f"http://{internal.load_balancer_dns_name}"

    def _caller_groups(self, spec: ServiceSpec) -> list[ec2.ISecurityGroup]:
        """The security group that lets a service call the internal load balancer, for those that call others."""
        return [self.internal_callers_sg] if spec.name in INTERNAL_CALLERS else []

    def _route_internally(self, spec: ServiceSpec, service: ecs.FargateService) -> None:
        """Put `service` behind the internal load balancer for the paths others call."""
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
               periods: int = 3) -> None:  # fmt: skip
        alarm = cloudwatch.Alarm(
            self, name, metric=metric, threshold=threshold, evaluation_periods=periods, comparison_operator=comparison,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING, alarm_description=description,
        )  # fmt: skip
        alarm.add_alarm_action(self.alarm_action)

    def _service_alarms(
        self, spec: ServiceSpec, service: ecs.FargateService, target_group: elbv2.ApplicationTargetGroup
    ) -> None:
        metrics = target_group.metrics
        self._alarm(f"{spec.name}Target5xx", metrics.http_code_target(elbv2.HttpCodeTarget.TARGET_5XX_COUNT,
                    period=Duration.minutes(1), statistic="Sum"), 10, f"{spec.name} answers 5xx")  # fmt: skip
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
        for queue in ("validation", "verdicts"):
            self._alarm(f"DeadJobs{queue.title()}", _queue_metric("DeadJobs", queue, "Maximum"), 0,
                        f"dead jobs in the {queue} queue: a validation gave up", periods=1)  # fmt: skip


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


def _queue_metric(name: str, queue: str, statistic: str) -> cloudwatch.Metric:
    return cloudwatch.Metric(
        namespace=METRICS_NAMESPACE, metric_name=name, dimensions_map={"Queue": queue},
        statistic=statistic, period=Duration.minutes(1),
    )  # fmt: skip


def _retention(days: int) -> logs.RetentionDays:
    """The shortest of the usual CloudWatch Logs retentions that keeps at least `days`."""
    choices = [
        (7, logs.RetentionDays.ONE_WEEK), (14, logs.RetentionDays.TWO_WEEKS), (30, logs.RetentionDays.ONE_MONTH),
        (90, logs.RetentionDays.THREE_MONTHS), (180, logs.RetentionDays.SIX_MONTHS), (365, logs.RetentionDays.ONE_YEAR),
    ]  # fmt: skip
    return next((retention for limit, retention in choices if limit >= days), logs.RetentionDays.ONE_YEAR)
