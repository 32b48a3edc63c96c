"""The `depot` command. Exit codes: 0 done, 1 failed, 2 usage, 3 authentication, 4 not found,
5 conflict, 6 rejected by validation."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import click

from depot_client import __version__
from depot_client.credentials import URL_ENV
from depot_client.errors import DepotError, RejectedError, UsageError
from depot_client.planning import MiB
from depot_client.progress import for_terminal
from depot_client.ratelimit import parse_rate
from depot_client.sdk import Depot
from depot_client.transfer import TransferOptions, split_reference

F = TypeVar("F", bound=Callable[..., Any])
THRESHOLD_ENV = "DEPOT_MULTIPART_THRESHOLD_MIB"
PART_SIZE_ENV = "DEPOT_PART_SIZE_MIB"
CONCURRENCY_ENV = "DEPOT_CONCURRENCY"


class Context:
    def __init__(self, quiet: bool, options: TransferOptions) -> None:
        self.quiet = quiet
        self.options = options
        self._depot: Depot | None = None

    @property
    def depot(self) -> Depot:
        if self._depot is None:
            self._depot = Depot(options=self.options)
        return self._depot


pass_context = click.make_pass_decorator(Context)


def json_option(function: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON, for scripts.")(function)


def emit(data: Any, as_json: bool, human: Callable[[Any], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        human(data)


def table(rows: Iterable[dict[str, Any]], columns: list[str]) -> None:
    shown = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(column)] + [len(row[i]) for row in shown]) for i, column in enumerate(columns)]
    click.echo("  ".join(column.upper().ljust(width) for column, width in zip(columns, widths, strict=True)).rstrip())
    for row in shown:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(str(item) for item in value) or "-"
    return str(value)


def details(data: dict[str, Any]) -> None:
    for key, value in data.items():
        if isinstance(value, dict | list) and value:
            click.echo(f"{key}: {json.dumps(value, sort_keys=True)}")
        else:
            click.echo(f"{key}: {_cell(value)}")


def _env_mib(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(float(value) * MiB) if value else default


def _rate(_context: click.Context, _parameter: click.Parameter, value: str | None) -> int | None:
    try:
        return parse_rate(value) if value else None
    except ValueError as error:
        raise click.BadParameter(str(error)) from error


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="depot")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors (no progress).")
@click.option(
    "--limit-rate",
    envvar="DEPOT_LIMIT_RATE",
    callback=_rate,
    metavar="RATE",
    help="At most RATE bytes a second per transfer, all parts together: 500K, 10M, 1G (default: no limit).",
)
@click.pass_context
def cli(context: click.Context, quiet: bool, limit_rate: int | None) -> None:
    """Depot: publish and fetch versioned packages.

    Credentials: DEPOT_URL and DEPOT_TOKEN, else the login saved by `depot login`.
    Exit codes: 0 done, 1 failed, 2 usage, 3 authentication, 4 not found, 5 conflict,
    6 rejected by validation.
    """
    defaults = TransferOptions()
    options = TransferOptions(
        threshold=_env_mib(THRESHOLD_ENV, defaults.threshold),
        part_size=_env_mib(PART_SIZE_ENV, defaults.part_size),
        concurrency=int(os.environ.get(CONCURRENCY_ENV) or defaults.concurrency),
        max_bytes_per_second=limit_rate,
    )
    context.obj = Context(quiet, options)
    context.call_on_close(lambda: context.obj._depot.close() if context.obj._depot else None)


# Login


@cli.command()
@click.option("--url", help=f"The registry's URL (default: ${URL_ENV} or the saved one).")
@click.option("--token", help="An API token (dpt_...) instead of a password.")
@click.option("--username", "-u", help="Username (asked for if not given).")
@pass_context
def login(ctx: Context, url: str | None, token: str | None, username: str | None) -> None:
    """Log in and save the login (mode 0600, under the user's config directory)."""
    depot = Depot(options=ctx.options)
    saved = depot.store.load()
    url = url or os.environ.get(URL_ENV) or (saved.url if saved else None) or click.prompt("Depot URL")
    if token is None:
        username = username or click.prompt("Username")
        password = os.environ.get("DEPOT_PASSWORD") or click.prompt("Password", hide_input=True)
        user = depot.login(url, username=username, password=password)
    else:
        user = depot.login(url, token=token)
    depot.close()
    if not ctx.quiet:
        click.echo(f"Logged in to {url} as {user['username']}.")


@cli.command()
@pass_context
def logout(ctx: Context) -> None:
    """Revoke the saved login and forget it."""
    had = Depot(options=ctx.options).logout()
    if not ctx.quiet:
        click.echo("Logged out." if had else "Not logged in.")


@cli.command()
@json_option
@pass_context
def whoami(ctx: Context, as_json: bool) -> None:
    """The user this client acts as."""
    user = ctx.depot.whoami()
    emit(
        user,
        as_json,
        lambda u: click.echo(
            f"{u['username']} on {ctx.depot.url} (roles: {_cell(u['roles'])}, groups: {_cell(u['groups'])})"
        ),
    )


# Transfers


@cli.command()
@click.argument("name")
@click.argument("version")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--description", help="The version's description.")
@click.option("--metadata", help="The version's metadata, a JSON object.")
@click.option("--wait", is_flag=True, help="Wait for validation; exit 6 if the version is rejected.")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds --wait waits at most.")
@json_option
@pass_context
def push(
    ctx: Context, *, name: str, version: str, path: Path, description: str | None, metadata: str | None,
    wait: bool, timeout: float, as_json: bool,
) -> None:  # fmt: skip
    """Publish PATH (a file, or a directory as a tar.gz) as NAME VERSION. Run again to resume."""
    parsed: dict[str, Any] | None = None
    if metadata is not None:
        try:
            parsed = json.loads(metadata)
        except ValueError as error:
            raise UsageError(f"--metadata is not JSON: {error}") from None
        if not isinstance(parsed, dict):
            raise UsageError("--metadata must be a JSON object")
    result = ctx.depot.push(
        name, version, path, description=description, metadata=parsed, wait=wait, timeout=timeout,
        progress=for_terminal(ctx.quiet),
    )  # fmt: skip
    found = result.version
    if as_json:
        click.echo(json.dumps(found, indent=2, sort_keys=True))
    elif not ctx.quiet:
        how = "already published with these bytes" if result.mode == "existing" else found["status"]
        click.echo(f"{found['package']} {found['version']}: {how} (sha256 {found['sha256']})")


@cli.command()
@click.argument("reference", metavar="NAME[@VERSION]")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="A file, or an existing directory.")
@pass_context
def pull(ctx: Context, reference: str, output: Path | None) -> None:
    """Download NAME@VERSION (default: latest); verified by sha256. Run again to resume."""
    result = ctx.depot.pull(reference, output, progress=for_terminal(ctx.quiet))
    if not ctx.quiet:
        click.echo(f"{result.path} ({result.version['package']} {result.version['version']}, sha256 verified)")


# Reading


@cli.command()
@click.argument("query", required=False)
@click.option("--owner")
@click.option("--limit", default=50, show_default=True)
@json_option
@pass_context
def search(ctx: Context, query: str | None, owner: str | None, limit: int, as_json: bool) -> None:
    """Packages whose name or description matches QUERY."""
    found = ctx.depot.search(query, owner=owner, limit=limit)
    emit(found, as_json, lambda rows: table(rows, ["name", "latest_version", "visibility", "owner", "description"]))


@cli.command()
@click.argument("reference", metavar="NAME[@VERSION]")
@json_option
@pass_context
def info(ctx: Context, reference: str, as_json: bool) -> None:
    """A package, or one of its versions."""
    name, _, version = reference.partition("@")
    found = ctx.depot.version(name, version) if version else ctx.depot.info(name)
    emit(found, as_json, details)


@cli.command()
@click.argument("name")
@click.option("--limit", type=int)
@json_option
@pass_context
def versions(ctx: Context, name: str, limit: int | None, as_json: bool) -> None:
    """A package's versions, highest first (yanked ones included)."""
    columns = ["version", "status", "size", "created_at", "uploaded_by"]
    found = ctx.depot.versions(name, limit=limit, fields=() if as_json else columns)  # the table: its columns only
    emit(found, as_json, lambda rows: table(rows, columns))


def _exact(reference: str) -> tuple[str, str]:
    name, version = split_reference(reference)
    if "@" not in reference:
        raise UsageError("give the version: NAME@VERSION")
    return name, version


@cli.command()
@click.argument("reference", metavar="NAME@VERSION")
@json_option
@pass_context
def report(ctx: Context, reference: str, as_json: bool) -> None:
    """The validation report of a version."""
    found = ctx.depot.report(*_exact(reference))

    def human(data: dict[str, Any]) -> None:
        click.echo(f"{data['package']} {data['version']}: {data['status']}")
        table(data.get("checks", []), ["id", "status", "detail"])

    emit(found, as_json, human)


@cli.command()
@click.argument("reference", metavar="NAME@VERSION")
@click.option("--reason", required=True)
@pass_context
def yank(ctx: Context, reference: str, reason: str) -> None:
    """Yank a version: never `latest` again, still downloadable by exact version."""
    found = ctx.depot.yank(*_exact(reference), reason=reason)
    if not ctx.quiet:
        click.echo(f"{found['package']} {found['version']}: {found['status']}")


@cli.command()
@click.argument("reference", metavar="NAME@VERSION")
@pass_context
def unyank(ctx: Context, reference: str) -> None:
    """Make a yanked version available again."""
    found = ctx.depot.unyank(*_exact(reference))
    if not ctx.quiet:
        click.echo(f"{found['package']} {found['version']}: {found['status']}")


@cli.command()
@click.argument("reference", metavar="NAME[@VERSION]")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_context
def delete(ctx: Context, reference: str, yes: bool) -> None:
    """Delete a version, or a whole package (its name stays reserved)."""
    name, _, version = reference.partition("@")
    what = f"{name} {version}" if version else f"the package {name} and all its versions"
    if not yes:
        click.confirm(f"Delete {what}?", abort=True)
    ctx.depot.delete(name, version or None)
    if not ctx.quiet:
        click.echo(f"Deleted {what}.")


@cli.command()
@click.argument("reference", metavar="NAME@VERSION")
@click.option("--wait", is_flag=True, help="Wait for the new verdict; exit 6 if rejected.")
@json_option
@pass_context
def rerun(ctx: Context, reference: str, wait: bool, as_json: bool) -> None:
    """Validate a version again (admins)."""
    name, version = _exact(reference)
    found = ctx.depot.rerun(name, version)
    if wait:
        found = ctx.depot.wait(name, version)
    emit(found, as_json, lambda data: click.echo(f"{name} {version}: {data['status']}"))


@cli.command()
@click.argument("reference", metavar="NAME[@VERSION]")
@click.argument("action", type=click.Choice(["read", "download", "write", "admin"]))
@click.option("--user", "username", help="Ask for another user (admins and services).")
@json_option
@pass_context
def check(ctx: Context, reference: str, action: str, username: str | None, as_json: bool) -> None:
    """Whether you (or --user) may do ACTION on a package; exits 1 when not allowed."""
    name, _, version = reference.partition("@")
    found = ctx.depot.check(name, action, version or None, {"username": username} if username else None)
    emit(found, as_json, lambda d: click.echo(f"{'allowed' if d['allowed'] else 'not allowed'}: {d['reason']}"))
    if not found["allowed"]:
        sys.exit(1)


# Tokens


@cli.group()
def token() -> None:
    """API tokens (for CI and scripts: `depot login --token` or DEPOT_TOKEN)."""


@token.command("create")
@click.argument("name")
@click.option("--days", type=click.IntRange(1, 365), help="Days until it expires (default 90).")
@json_option
@pass_context
def token_create(ctx: Context, name: str, days: int | None, as_json: bool) -> None:
    """Create a token; its secret is shown only now."""
    made = ctx.depot.create_token(name, days)
    emit(
        made, as_json, lambda d: click.echo(f"{d['token']}\n(id {d['id']}, expires {d['expires_at']}; shown only once)")
    )


@token.command("list")
@json_option
@pass_context
def token_list(ctx: Context, as_json: bool) -> None:
    """Your tokens (without their secrets)."""
    emit(
        ctx.depot.tokens(),
        as_json,
        lambda rows: table(rows, ["id", "name", "created_at", "expires_at", "last_used_at"]),
    )


@token.command("revoke")
@click.argument("token_id")
@pass_context
def token_revoke(ctx: Context, token_id: str) -> None:
    """Revoke a token by id."""
    ctx.depot.revoke_token(token_id)
    if not ctx.quiet:
        click.echo(f"Revoked {token_id}.")


# Administration


@cli.group()
def group() -> None:
    """Groups (admins change them)."""


@group.command("list")
@json_option
@pass_context
def group_list(ctx: Context, as_json: bool) -> None:
    emit(ctx.depot.groups(), as_json, lambda rows: table(rows, ["name", "member_count", "description"]))


@group.command("create")
@click.argument("name")
@click.option("--description")
@pass_context
def group_create(ctx: Context, name: str, description: str | None) -> None:
    ctx.depot.create_group(name, description)


@group.command("delete")
@click.argument("name")
@pass_context
def group_delete(ctx: Context, name: str) -> None:
    ctx.depot.delete_group(name)


@group.command("add")
@click.argument("name")
@click.argument("username")
@pass_context
def group_add(ctx: Context, name: str, username: str) -> None:
    """Add USERNAME to the group NAME."""
    ctx.depot.add_member(name, username)


@group.command("remove")
@click.argument("name")
@click.argument("username")
@pass_context
def group_remove(ctx: Context, name: str, username: str) -> None:
    """Remove USERNAME from the group NAME."""
    ctx.depot.remove_member(name, username)


@cli.group()
def user() -> None:
    """Users (admins)."""


@user.command("list")
@click.argument("query", required=False)
@json_option
@pass_context
def user_list(ctx: Context, query: str | None, as_json: bool) -> None:
    emit(ctx.depot.users(query), as_json, lambda rows: table(rows, ["username", "roles", "groups", "disabled"]))


@user.command("show")
@click.argument("username")
@json_option
@pass_context
def user_show(ctx: Context, username: str, as_json: bool) -> None:
    emit(ctx.depot.user(username), as_json, details)


@user.command("create")
@click.argument("username")
@click.option("--email")
@click.option("--role", "roles", multiple=True, type=click.Choice(["admin", "service"]))
@click.option("--group", "groups", multiple=True)
@pass_context
def user_create(
    ctx: Context, username: str, email: str | None, roles: tuple[str, ...], groups: tuple[str, ...]
) -> None:
    """Create a user; the password is asked for (or DEPOT_NEW_PASSWORD)."""
    password = os.environ.get("DEPOT_NEW_PASSWORD") or click.prompt(
        "Password", hide_input=True, confirmation_prompt=True
    )
    ctx.depot.create_user(username, password, email=email, roles=list(roles), groups=list(groups))


@user.command("disable")
@click.argument("username")
@pass_context
def user_disable(ctx: Context, username: str) -> None:
    ctx.depot.update_user(username, disabled=True)


@user.command("enable")
@click.argument("username")
@pass_context
def user_enable(ctx: Context, username: str) -> None:
    ctx.depot.update_user(username, disabled=False)


@user.command("delete")
@click.argument("username")
@pass_context
def user_delete(ctx: Context, username: str) -> None:
    ctx.depot.delete_user(username)


@cli.group()
def rules() -> None:
    """Admission rules of validation."""


@rules.command("get")
@json_option
@pass_context
def rules_get(ctx: Context, as_json: bool) -> None:
    emit(ctx.depot.rules(), as_json, details)


@rules.command("set")
@click.argument("source", type=click.File("r"), default="-")
@json_option
@pass_context
def rules_set(ctx: Context, source: Any, as_json: bool) -> None:
    """Replace the rules with the JSON in SOURCE (a file, or - for stdin) (admins)."""
    try:
        given = json.load(source)
    except ValueError as error:
        raise UsageError(f"not JSON: {error}") from None
    emit(ctx.depot.set_rules(given), as_json, details)


def main(argv: list[str] | None = None) -> None:
    """The console script: run the command, turn errors into a message and the exit code."""
    try:
        cli.main(args=argv, prog_name="depot", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.ClickException as error:
        error.show()
        sys.exit(2 if isinstance(error, click.UsageError) else error.exit_code)
    except RejectedError as error:
        click.echo(f"depot: {error.message}", err=True)
        for check_ in error.report.get("checks", []):
            if check_.get("status") == "fail":
                click.echo(f"  {check_.get('id')}: {check_.get('detail')}", err=True)
        sys.exit(error.exit_code)
    except DepotError as error:
        click.echo(f"depot: {error.message}", err=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted: run the same command again to continue.", err=True)
        sys.exit(130)
