#!/usr/bin/env bash
# The steps of `make deploy`, `make rollback` and `make destroy`, one per command (`make -n deploy`
# lists them in order). Every step can be run again: it reads what is already done from AWS.
#
#   deploy/deploy.sh <step>      with TAG (the images' tag; `deploy.sh tag` prints the default) and
#                                AWS credentials set; CONTEXT="name=value ..." reaches every `cdk`
#
# Needs: aws, docker, node and npm (the CDK CLI pinned in deploy/package-lock.json), git, and
# credentials for the target account and region (AWS_PROFILE or AWS_* variables, AWS_REGION).
# CDK=<command> runs another CDK CLI instead of the pinned one (the tests run a recording stub).
# Written for bash 3.2 and BSD tools as well (macOS): no `sed -i`, `\U`, `readarray` or `declare -A`.
#
# What the steps know of earlier runs lives in AWS, in two SSM parameters written only once a step
# has succeeded (never in a stack output, which a failed step can leave pointing at a new tag):
#   /depot/Depot/migrated-tag   the newest tag whose migrations succeeded (`migrate`)
#   /depot/Depot/services-tag   the tag the services last rolled to (`services`, `rollback`)
# Until the first migration has succeeded, the services stay paused (no task runs), so no service
# ever starts on an unmigrated database; the services only roll to a tag whose migrations succeeded.
set -euo pipefail

DEPLOY_DIR="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$DEPLOY_DIR")"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
PINNED_CDK="$DEPLOY_DIR/node_modules/.bin/cdk"
CDK="${CDK:-$PINNED_CDK}"
STACK=Depot
BASE_STACK=DepotBase
PARAMETERS="/depot/$STACK"
IMAGES=(auth_service package_service validator_service web_service migrate)
SERVICES=(auth_service package_service validator_service web_service)
POLL_SECONDS="${POLL_SECONDS:-10}"
MIGRATION_TIMEOUT_SECONDS="${MIGRATION_TIMEOUT_SECONDS:-3600}"
export JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION=1
# cdk.json's app is `python app.py`: the CLI must find this project's environment's python.
if [ -d "$(dirname "$PYTHON")" ]; then
    PATH="$(cd "$(dirname "$PYTHON")" && pwd):$PATH"
    export PATH
fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/depot-deploy.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

say() { printf '\n==> %s\n' "$*"; }
fail() { printf '\nFAILED: %s\n' "$*" >&2; exit 1; }
keys() { (cd "$ROOT" && "$PYTHON" -m auth_service.keys "$@"); }  # auth_service's own key tools

# CONTEXT="name=value name=value": context for the CDK app, the same for every `cdk` command (and
# for `make synth`). The tags and `paused` are the steps' own choice.
context_args=()
set -f  # the pairs are split on spaces, never expanded as file names
for pair in ${CONTEXT:-}; do
    case "$pair" in
        image_tag=* | migrate_image_tag=* | paused=*)
            fail "CONTEXT sets ${pair%%=*}: the deploy steps choose the tags and pausing (TAG=..., make rollback)" ;;
        ?*=*) context_args+=(-c "$pair") ;;
        *) fail "CONTEXT: expected name=value pairs separated by spaces, got '$pair'" ;;
    esac
done
set +f

run_cdk() {  # run_cdk <command> <args>: the CDK CLI in deploy/, with CONTEXT
    (cd "$DEPLOY_DIR" && "$CDK" "$@" ${context_args[@]+"${context_args[@]}"})
}

cdk_deploy() {
    rm -f "$WORK"/*.outputs  # the stack's outputs may change
    run_cdk deploy "$@" --require-approval never --progress events \
        || fail "cdk deploy $* (see the events above, and the CloudFormation console: the stack's Events tab)"
}

stack_status() {  # stack_status <stack>: its CloudFormation status, NONE if it does not exist
    if aws cloudformation describe-stacks --stack-name "$1" --query 'Stacks[0].StackStatus' --output text \
        2>"$WORK/error"; then
        return
    fi
    grep -q 'does not exist' "$WORK/error" || { cat "$WORK/error" >&2; fail "aws cloudformation describe-stacks $1"; }
    echo NONE
}

output() {  # output <stack> <name>: an output of a deployed stack ("" if it has none of that name)
    local file="$WORK/$1.outputs"
    if [ ! -f "$file" ]; then
        aws cloudformation describe-stacks --stack-name "$1" \
            --query 'Stacks[0].Outputs[].[OutputKey, OutputValue]' --output text >"$file.part" \
            || fail "reading the outputs of stack $1 (is it deployed? aws cloudformation describe-stacks --stack-name $1)"
        mv "$file.part" "$file"
    fi
    awk -F '\t' -v name="$2" '$1 == name { print $2 }' "$file"
}

require_output() {
    local value
    value="$(output "$1" "$2")" || exit 1  # (a command substitution does not inherit set -e in bash 3.2)
    [ -n "$value" ] || fail "stack $1 has no output $2: deploy it first (make deploy)"
    printf '%s\n' "$value"
}

parameter() {  # parameter <name>: an SSM parameter of this deployment ("" if it was never written)
    if aws ssm get-parameter --name "$PARAMETERS/$1" --query Parameter.Value --output text 2>"$WORK/error"; then
        return
    fi
    grep -q ParameterNotFound "$WORK/error" || { cat "$WORK/error" >&2; fail "aws ssm get-parameter $PARAMETERS/$1"; }
}

set_parameter() {  # set_parameter <name> <value>
    aws ssm put-parameter --name "$PARAMETERS/$1" --type String --value "$2" --overwrite >/dev/null \
        || fail "aws ssm put-parameter $PARAMETERS/$1"
}

forget_parameters() {
    aws ssm delete-parameters --names "$PARAMETERS/migrated-tag" "$PARAMETERS/services-tag" >/dev/null \
        || fail "aws ssm delete-parameters $PARAMETERS/..."
}

pascal_case() {  # auth_service -> AuthService (awk, not GNU sed's \U)
    printf '%s\n' "$1" | awk -F _ '{ for (i = 1; i <= NF; i++) printf "%s%s", toupper(substr($i, 1, 1)), substr($i, 2); print "" }'
}

repository() { printf 'depot/%s\n' "$(printf '%s' "$1" | tr _ -)"; }

image_exists() {  # image_exists <image> <tag>: 0 if the repository holds that tag, 1 if not
    if aws ecr describe-images --repository-name "$(repository "$1")" --image-ids "imageTag=$2" >/dev/null \
        2>"$WORK/error"; then
        return 0
    fi
    grep -q ImageNotFoundException "$WORK/error" || { cat "$WORK/error" >&2; fail "aws ecr describe-images $(repository "$1")"; }
    return 1
}

cdk_cli() {  # the pinned CDK CLI, installed from deploy/package-lock.json
    if [ "$CDK" != "$PINNED_CDK" ]; then
        say "using the CDK CLI $CDK"
        return
    fi
    command -v npm >/dev/null || fail "npm is not installed (see README: Deploying to AWS)"
    (cd "$DEPLOY_DIR" && npm ci --no-audit --no-fund --silent) || fail "npm ci in deploy/ (the pinned CDK CLI)"
}

tag() {  # the images' tag: the commit; with uncommitted changes, also their content; FORCE_BUILD=1: a new one
    local tag tree
    tag="$(git -C "$ROOT" rev-parse --short=12 HEAD)"
    if [ -n "$(git -C "$ROOT" status --porcelain)" ]; then
        # The work tree as git would commit it, through a scratch index: the real one is untouched.
        tree="$(cd "$ROOT" && GIT_INDEX_FILE="$WORK/index" git add -A && GIT_INDEX_FILE="$WORK/index" git write-tree)"
        tag="$tag-dirty-$(printf '%s' "$tree" | cut -c 1-12)"
    fi
    if [ "${FORCE_BUILD:-0}" = 1 ]; then
        tag="$tag-$(date -u +%Y%m%d%H%M%S)"
    fi
    printf '%s\n' "$tag"
}

refuse_older_tag() {  # `make deploy TAG=<older>` would run old migrations against a newer schema
    local migrated
    migrated="$(parameter migrated-tag)"
    if [ -n "$migrated" ] && [ "${TAG%%-*}" != "${migrated%%-*}" ] \
        && git -C "$ROOT" merge-base --is-ancestor "${TAG%%-*}" "${migrated%%-*}" 2>/dev/null; then
        fail "$TAG is older than $migrated, whose migrations already ran: to return the services to it without migrating, make rollback TAG=$TAG"
    fi
}

prerequisites() {
    say "checking prerequisites (tag $TAG)"
    for tool in aws docker git; do
        command -v "$tool" >/dev/null || fail "$tool is not installed (see README: Deploying to AWS)"
    done
    aws sts get-caller-identity --output text >/dev/null || fail "no AWS credentials (aws sts get-caller-identity)"
    docker info >/dev/null 2>&1 || fail "the Docker engine is not running"
    case "$TAG" in
        *-dirty-*) echo "warning: $TAG is built from uncommitted changes (its tag names their content)" ;;
    esac
    refuse_older_tag
    cdk_cli
    say "bootstrapping the CDK in the account (once; a no-op afterwards)"
    run_cdk bootstrap || fail "cdk bootstrap"
}

base() {
    say "deploying DepotBase (image repositories, secrets)"
    cdk_deploy "$BASE_STACK" --exclusively
}

signing_key_loads() {  # signing_key_loads <secret>: 0 if its value is a key auth_service loads, 1 if not, 2 if empty
    local statuses
    set +e
    aws secretsmanager get-secret-value --secret-id "$1" --query SecretString --output text 2>"$WORK/error" \
        | keys check >"$WORK/kid" 2>/dev/null
    statuses="${PIPESTATUS[0]} ${PIPESTATUS[1]}"
    set -e
    case "$statuses" in
        "0 0") return 0 ;;
        "0 "*) return 1 ;;
    esac
    grep -q "can't find the specified secret value" "$WORK/error" && return 2
    cat "$WORK/error" >&2
    fail "reading the secret $1"
}

signing_key() {
    local secret state=0
    secret="$(require_output "$BASE_STACK" SigningKeySecret)"
    signing_key_loads "$secret" || state=$?
    case "$state" in
        0)
            say "the signing key in $secret loads: kept ($(cat "$WORK/kid"))"
            return ;;
        1) say "$secret holds a value that is no signing key auth_service can load (a password CloudFormation generated?): replacing it with a new key" ;;
        *) say "generating the token signing key into $secret" ;;
    esac
    keys generate | aws secretsmanager put-secret-value --secret-id "$secret" \
        --secret-string file:///dev/stdin >/dev/null || fail "storing the signing key"
    signing_key_loads "$secret" || fail "the signing key written to $secret does not load"
    say "signing key stored ($(cat "$WORK/kid"))"
}

images() {
    local registry platform commit image uri
    registry="$(require_output "$BASE_STACK" AuthServiceRepositoryUri)"
    registry="${registry%%/*}"
    platform="$(output "$BASE_STACK" ImagePlatform)"
    platform="${platform:-linux/amd64}"  # a DepotBase from before the output: its tasks ran on x86_64
    commit="$(git -C "$ROOT" rev-parse HEAD)"
    say "logging in to $registry"
    aws ecr get-login-password | docker login --username AWS --password-stdin "$registry" >/dev/null \
        || fail "docker login to ECR"
    for image in "${IMAGES[@]}"; do
        uri="$(require_output "$BASE_STACK" "$(pascal_case "$image")RepositoryUri"):$TAG"
        if image_exists "$image" "$TAG"; then
            say "$uri exists: not rebuilt (tags are immutable; FORCE_BUILD=1 builds under a new tag)"
            continue
        fi
        say "building $uri for $platform"
        docker build --platform "$platform" --target "$image" --tag "$uri" \
            --label "org.opencontainers.image.revision=$commit" --label "org.opencontainers.image.version=$TAG" \
            "$ROOT" || fail "docker build --target $image"
        docker push "$uri" || fail "docker push $uri"
    done
}

migrate_image() {
    local status running
    status="$(stack_status "$STACK")"
    if [ "$status" = NONE ] || [ "$status" = ROLLBACK_COMPLETE ]; then
        # A new stack has a new, empty database: what was recorded of an older one no longer holds.
        forget_parameters
    fi
    running="$(parameter services-tag)"
    if [ -z "$running" ]; then
        say "the services have not run yet: Depot stays paused (no task) while the migration task is pointed at $TAG"
        cdk_deploy "$STACK" --exclusively -c "image_tag=$TAG" -c "migrate_image_tag=$TAG" -c paused=true
    else
        say "pointing the migration task at $TAG (the services keep running $running)"
        cdk_deploy "$STACK" --exclusively -c "image_tag=$running" -c "migrate_image_tag=$TAG"
    fi
}

snapshot_before_migrating() {  # production: a manual snapshot of the database, kept until deleted
    local environment instance snapshot status waited=0
    environment="$(output "$STACK" Environment)"
    if [ "$environment" != production ] && [ "${SNAPSHOT:-0}" != 1 ]; then
        say "no snapshot before migrating in ${environment:-staging} (point-in-time restore covers it; SNAPSHOT=1 takes one)"
        return
    fi
    instance="$(require_output "$STACK" DatabaseInstanceId)"
    snapshot="depot-before-$(printf '%s' "$TAG" | tr -c 'A-Za-z0-9' '-')"
    if status="$(aws rds describe-db-snapshots --db-snapshot-identifier "$snapshot" \
        --query 'DBSnapshots[0].Status' --output text 2>"$WORK/error")"; then
        say "snapshot $snapshot exists ($status): kept"
    else
        grep -q DBSnapshotNotFound "$WORK/error" || { cat "$WORK/error" >&2; fail "aws rds describe-db-snapshots"; }
        say "snapshotting the database $instance into $snapshot"
        aws rds create-db-snapshot --db-instance-identifier "$instance" --db-snapshot-identifier "$snapshot" \
            >/dev/null || fail "aws rds create-db-snapshot $snapshot"
    fi
    while :; do
        status="$(aws rds describe-db-snapshots --db-snapshot-identifier "$snapshot" \
            --query 'DBSnapshots[0].Status' --output text)" || fail "aws rds describe-db-snapshots $snapshot"
        case "$status" in
            available) say "snapshot $snapshot is available"; return ;;
            creating | copying) ;;
            *) fail "snapshot $snapshot is $status: see the RDS console, Snapshots" ;;
        esac
        sleep "$POLL_SECONDS"
        waited=$((waited + POLL_SECONDS))
    done
}

wait_for_task() {  # wait_for_task <cluster> <task>: until it stops (the CLI's own waiter gives up after 10 minutes)
    local status waited=0
    while :; do
        status="$(aws ecs describe-tasks --cluster "$1" --tasks "$2" --query 'tasks[0].lastStatus' --output text)" \
            || fail "aws ecs describe-tasks $2"
        [ "$status" = STOPPED ] && return
        if [ "$waited" -ge "$MIGRATION_TIMEOUT_SECONDS" ]; then
            fail "the migration task $2 is still $status after $waited s (MIGRATION_TIMEOUT_SECONDS): see its log group /depot/$STACK/migrate"
        fi
        sleep "$POLL_SECONDS"
        waited=$((waited + POLL_SECONDS))
    done
}

migrate() {
    local cluster task_definition subnets security_group task_arn failure exit_code reason
    cluster="$(require_output "$STACK" ClusterName)"
    task_definition="$(require_output "$STACK" MigrationTaskDefinition)"
    subnets="$(require_output "$STACK" TaskSubnets)"
    security_group="$(require_output "$STACK" TaskSecurityGroup)"
    snapshot_before_migrating
    say "running the migrations of $TAG ($task_definition)"
    read -r task_arn failure <<EOF
$(aws ecs run-task --cluster "$cluster" --task-definition "$task_definition" --launch-type FARGATE \
        --started-by depot-migrate \
        --network-configuration "awsvpcConfiguration={subnets=[$subnets],securityGroups=[$security_group],assignPublicIp=DISABLED}" \
        --query '[tasks[0].taskArn, failures[0].reason]' --output text || echo "None aws-ecs-run-task-failed")
EOF
    [ -n "$task_arn" ] && [ "$task_arn" != None ] || fail "the migration task did not start: $failure"
    wait_for_task "$cluster" "$task_arn"
    read -r exit_code reason <<EOF
$(aws ecs describe-tasks --cluster "$cluster" --tasks "$task_arn" \
        --query '[tasks[0].containers[0].exitCode, tasks[0].stoppedReason]' --output text)
EOF
    [ "$reason" != None ] || reason=""
    if [ "$exit_code" != 0 ]; then
        fail "the migration task exited with $exit_code${reason:+ ($reason)}: its logs are in CloudWatch, log group /depot/$STACK/migrate; the services keep running $(parameter services-tag | grep . || echo 'nothing (paused)'); make deploy again once fixed"
    fi
    set_parameter migrated-tag "$TAG"
    say "migrations done: $PARAMETERS/migrated-tag is $TAG"
}

services() {
    local migrated
    migrated="$(parameter migrated-tag)"
    [ "$migrated" = "$TAG" ] || fail "the migrations of $TAG have not succeeded (last migrated: ${migrated:-none}): run the migrate step first"
    say "rolling the services to $TAG (circuit breaker: a failing rollout rolls back by itself)"
    cdk_deploy "$STACK" --exclusively -c "image_tag=$TAG" -c "migrate_image_tag=$TAG"
    set_parameter services-tag "$TAG"
}

rollback() {
    local migrated image
    migrated="$(parameter migrated-tag)"
    [ -n "$migrated" ] || fail "nothing has been migrated yet: there is nothing to roll back"
    for image in "${SERVICES[@]}"; do
        image_exists "$image" "$TAG" || fail "$(repository "$image") has no image $TAG: the tags the services ran are listed by aws ssm get-parameter-history --name $PARAMETERS/services-tag"
    done
    if ! aws ssm get-parameter-history --name "$PARAMETERS/services-tag" --query 'Parameters[].Value' --output text \
        | tr '\t' '\n' | grep -Fqx "$TAG"; then
        [ "${FORCE:-0}" = 1 ] || fail "the services never ran $TAG (aws ssm get-parameter-history --name $PARAMETERS/services-tag): FORCE=1 rolls back to it anyway"
    fi
    cdk_cli
    say "rolling the services back to $TAG without migrating (the migration task stays at $migrated)"
    cdk_deploy "$STACK" --exclusively -c "image_tag=$TAG" -c "migrate_image_tag=$migrated"
    set_parameter services-tag "$TAG"
}

wait_stable() {
    local cluster
    cluster="$(require_output "$STACK" ClusterName)"
    say "waiting for the services to be stable"
    aws ecs wait services-stable --cluster "$cluster" --services \
        "$(require_output "$STACK" AuthServiceServiceName)" "$(require_output "$STACK" PackageServiceServiceName)" \
        "$(require_output "$STACK" ValidatorServiceServiceName)" "$(require_output "$STACK" WebServiceServiceName)" \
        || fail "services not stable: see the ECS console (cluster $cluster, the service's Deployments and Events tabs)"
}

smoke() {
    local url prefix
    url="$(require_output "$STACK" LoadBalancerUrl)"
    for prefix in /auth /packages /validate; do
        say "GET $url$prefix/health/ready"
        curl --fail --silent --show-error --max-time 10 "$url$prefix/health/ready" \
            || fail "$prefix is not ready: its log group is /depot/$STACK/<service>"
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
    cdk_cli
    run_cdk destroy "$STACK" --force || fail "cdk destroy $STACK"
    forget_parameters  # a new stack starts with a new database: paused until migrated
    echo "DepotBase (image repositories, the signing key and the service token) is kept; remove it with:"
    echo "  (cd deploy && npx cdk destroy DepotBase)   # then delete the repositories and secrets it retains"
}

usage="usage: deploy/deploy.sh tag|prerequisites|base|signing-key|images|migrate-image|migrate|services|wait-stable|smoke|rollback|destroy"
case "${1:-}" in
    tag) tag ;;
    prerequisites | base | signing-key | images | migrate-image | migrate | services | wait-stable | smoke | rollback | destroy)
        TAG="${TAG:-$(tag)}"
        "$(printf '%s' "$1" | tr - _)" ;;
    *) fail "$usage" ;;
esac
