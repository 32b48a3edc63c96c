"""validator_service's HTTP operations (API.md section 4): HTTP in, HTTP out; the logic is in `service`."""

from __future__ import annotations

from common.api import Call, Operation
from validator_service import schemas, service
from validator_service.packages import PackageDirectory
from validator_service.users import UserDirectory


def operations(directory: PackageDirectory, users: UserDirectory) -> list[Operation]:
    """Every operation of the service. `directory` and `users` read package_service and auth_service."""

    async def validate(call: Call[schemas.ValidateRequest, None]) -> schemas.Decision:
        return await service.decision(directory, users, call.principal, call.body)

    async def get_report(call: Call[None, None]) -> schemas.Report:
        return await service.get_report(call.db, directory, call.principal, call.path("package"), call.path("version"))

    async def rerun(call: Call[None, None]) -> schemas.Report:
        return await service.rerun(call.db, directory, call.principal, call.path("package"), call.path("version"))

    async def get_rules(call: Call[None, None]) -> schemas.RulesView:
        return schemas.RulesView.of(await service.current_rules(call.db))

    async def put_rules(call: Call[schemas.RulesBody, None]) -> schemas.RulesView:
        return schemas.RulesView.of(await service.replace_rules(call.db, call.principal, call.body))

    report = "/reports/{package}/{version}"
    return [
        Operation("POST", "", validate, "May a subject (default: the caller) do an action to a package?",
                  body=schemas.ValidateRequest, response=schemas.Decision, errors=(403,), tags=("access",)),
        Operation("GET", report, get_report, "A version's validation report (whoever may read the package).",
                  response=schemas.Report, errors=(404,), tags=("reports",)),
        Operation("POST", f"{report}/rerun", rerun, "Validate a version again (admin).", auth="admin",
                  response=schemas.Report, status_code=202, errors=(404, 409), tags=("reports",)),
        Operation("GET", "/rules", get_rules, "The admission rules in force.", response=schemas.RulesView,
                  tags=("rules",)),
        Operation("PUT", "/rules", put_rules, "Replace the rules (admin); a field left out takes its default.",
                  auth="admin", body=schemas.RulesBody, response=schemas.RulesView, tags=("rules",)),
    ]  # fmt: skip
