#!/usr/bin/env bash
# The steps of `make deploy` and `make destroy`, one per command (`make -n deploy` lists them in order).
#
#   deploy/deploy.sh <step>      with TAG (the images' tag: the git commit) and AWS credentials set
#
# Needs: aws (v2), docker, node and npm (the pinned CDK CLI from deploy/package.json), git, and
# credentials for the target account and region (AWS_PROFILE or AWS_* variables, AWS_REGION).
set -euo pipefail

DEPLOY_DIR="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$DEPLOY_DIR")"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
CDK="$DEPLOY_DIR/node_modules/.bin/cdk"
TAG="${TAG:-$(git -C "$ROOT" rev-parse --short=12 HEAD)}"
IMAGES=(auth_service package_service validator_service web_service migrate)
export JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION=1

say() { printf '\n==> %s\n' "$*"; }
fail() { printf '\nFAILED: %s\n' "$*" >&2; exit 1; }
output() {  # output <stack> <name>: a CloudFormation output of a deployed stack
    aws cloudformation describe-stacks --stack-name "$1" \
        --query "Stacks[0].Outputs[?OutputKey=='$2'].OutputValue" --output text
}
cdk_deploy() {
    (cd "$DEPLOY_DIR" && "$CDK" deploy "$@" --require-approval never --progress events) \
        || fail "cdk deploy $* (see the events above, and the CloudFormation console's Events tab)"
}

prerequisites() {
    say "checking prerequisites"
    for tool in aws docker npm git; do
        command -v "$tool" >/dev/null || fail "$tool is not installed (see README: Deploying to AWS)"
    done
    aws sts get-caller-identity --output text >/dev/null || fail "no AWS credentials (aws sts get-caller-identity)"
    docker info >/dev/null 2>&1 || fail "the Docker engine is not running"
    if [ -n "$(git -C "$ROOT" status --porcelain)" ]; then
        echo "warning: uncommitted changes are not part of image tag $TAG"
    fi
    (cd "$DEPLOY_DIR" && npm ci --no-audit --no-fund --silent) || fail "npm ci in deploy/ (the pinned CDK CLI)"
    export CDK_DEFAULT_ACCOUNT CDK_DEFAULT_REGION
    say "bootstrapping the CDK in the account (once; a no-op afterwards)"
    (cd "$DEPLOY_DIR" && "$CDK" bootstrap) || fail "cdk bootstrap"
}

base() {
    say "deploying DepotBase (image repositories, secrets)"
    cdk_deploy DepotBase --exclusively
}

signing_key() {
    local secret
    secret="$(output DepotBase SigningKeySecret)"
    if aws secretsmanager get-secret-value --secret-id "$secret" --query SecretString --output text >/dev/null 2>&1; then
        say "the signing key is already set: kept"
        return
    fi
    say "generating the token signing key into $secret"
    "$PYTHON" -m auth_service.keys generate | aws secretsmanager put-secret-value --secret-id "$secret" \
        --secret-string file:///dev/stdin >/dev/null || fail "storing the signing key"
}

images() {
    local registry
    registry="$(output DepotBase AuthServiceRepositoryUri)"
    registry="${registry%%/*}"
    say "logging in to $registry"
    aws ecr get-login-password | docker login --username AWS --password-stdin "$registry" >/dev/null \
        || fail "docker login to ECR"
    for image in "${IMAGES[@]}"; do
        local name uri
        name="$(echo "$image" | sed -E 's/(^|_)([a-z])/\U\2/g')"  # auth_service -> AuthService
        uri="$(output DepotBase "${name}RepositoryUri"):$TAG"
        if aws ecr describe-images --repository-name "depot/${image//_/-}" --image-ids "imageTag=$TAG" >/dev/null 2>&1; then
            say "$uri exists: not rebuilt (tags are immutable)"
            continue
        fi
        say "building and pushing $uri"
        docker build --target "$image" --tag "$uri" "$ROOT" || fail "docker build --target $image"
        docker push "$uri" || fail "docker push $uri"
    done
}

migrate_image() {
    local current
    current="$(output Depot ImageTag 2>/dev/null || true)"
    if [ -z "$current" ] || [ "$current" = "None" ]; then
        say "first deploy: creating Depot with the services paused until the database is migrated"
        cdk_deploy Depot --exclusively -c "image_tag=$TAG" -c paused=true
    else
        say "pointing the migration task at $TAG (the services keep running $current)"
        cdk_deploy Depot --exclusively -c "image_tag=$current" -c "migrate_image_tag=$TAG"
    fi
}

migrate() {
    local cluster task_definition subnets security_group task_arn exit_code
    cluster="$(output Depot ClusterName)"
    task_definition="$(output Depot MigrationTaskDefinition)"
    subnets="$(output Depot TaskSubnets)"
    security_group="$(output Depot TaskSecurityGroup)"
    say "running the migrations ($task_definition)"
    task_arn="$(aws ecs run-task --cluster "$cluster" --task-definition "$task_definition" --launch-type FARGATE \
        --network-configuration "awsvpcConfiguration={subnets=[$subnets],securityGroups=[$security_group],assignPublicIp=DISABLED}" \
        --query 'tasks[0].taskArn' --output text)" || fail "aws ecs run-task"
    aws ecs wait tasks-stopped --cluster "$cluster" --tasks "$task_arn" || fail "waiting for the migration task"
    exit_code="$(aws ecs describe-tasks --cluster "$cluster" --tasks "$task_arn" \
        --query 'tasks[0].containers[0].exitCode' --output text)"
    if [ "$exit_code" != "0" ]; then
        fail "the migration task exited with $exit_code: its logs are in CloudWatch, log group /depot/Depot/migrate"
    fi
    say "migrations done"
}

services() {
    say "rolling the services to $TAG (circuit breaker: a failing rollout rolls back by itself)"
    cdk_deploy Depot --exclusively -c "image_tag=$TAG"
}

wait_stable() {
    local cluster
    cluster="$(output Depot ClusterName)"
    say "waiting for the services to be stable"
    aws ecs wait services-stable --cluster "$cluster" --services \
        "$(output Depot AuthServiceServiceName)" "$(output Depot PackageServiceServiceName)" \
        "$(output Depot ValidatorServiceServiceName)" "$(output Depot WebServiceServiceName)" \
        || fail "services not stable: see the ECS console (cluster $cluster, Deployments and Events)"
}

smoke() {
    local url
    url="$(output Depot LoadBalancerUrl)"
    for prefix in /auth /packages /validate; do
        say "GET $url$prefix/health/ready"
        curl --fail --silent --show-error --max-time 10 "$url$prefix/health/ready" \
            || fail "$prefix is not ready: its log group is /depot/Depot/<service>"
        echo
    done
    say "GET $url/health/ready (web_service: the pages, which need the three APIs)"
    curl --fail --silent --show-error --max-time 10 "$url/health/ready" \
        || fail "web_service is not ready: its log group is /depot/Depot/web_service"
    echo
    say "Depot $TAG is live at $url"
}

destroy() {
    say "destroying the Depot stack (the database, bucket and key are kept in production; DepotBase is kept)"
    (cd "$DEPLOY_DIR" && "$CDK" destroy Depot --force) || fail "cdk destroy Depot"
    echo "DepotBase (image repositories, the signing key and the service token) is kept; remove it with:"
    echo "  (cd deploy && npx cdk destroy DepotBase)   # then delete the repositories and secrets it retains"
}

step="${1:?usage: deploy/deploy.sh prerequisites|base|signing-key|images|migrate-image|migrate|services|wait-stable|smoke|destroy}"
"${step//-/_}"
