"""validator_service's HTTP operations (API.md section 4): HTTP in, HTTP out; the logic is in `service`."""

from __future__ import annotations

from common.api import Call, Operation
from common.app import authenticated
from validator_service import schemas, service
from validator_service.packages import PackageDirectory


def operations(directory: PackageDirectory) -> list[Operation]:
    """Every operation of the service. `directory` is bound to package_service when the app starts."""

    async def validate(call: Call[schemas.ValidateRequest, None]) -> schemas.Decision:
        return await service.decision(directory, await authenticated(call), call.body)

    async def get_report(call: Call[None, None]) -> schemas.Report:
        caller = await authenticated(call)
        return await service.get_report(call.db, directory, caller, call.path("package"), call.path("version"))

    async def rerun(call: Call[None, None]) -> schemas.Report:
        caller = await authenticated(call)
        return await service.rerun(call.db, directory, caller, call.path("package"), call.path("version"))

    async def get_rules(call: Call[None, None]) -> schemas.RulesView:
        await authenticated(call)
        return schemas.RulesView.of(await service.current_rules(call.db))

    async def put_rules(call: Call[schemas.RulesBody, None]) -> schemas.RulesView:
        return schemas.RulesView.of(await service.replace_rules(call.db, await authenticated(call), call.body))

    report = "/reports/{package}/{version}"
    return [
        Operation("POST", "", validate, "May a subject (default: the caller) do an action to a package?",
                  body=schemas.ValidateRequest, response=schemas.Decision, errors=(400, 401, 403, 503),
                  tags=("access",)),
        Operation("GET", report, get_report, "A version's validation report (whoever may read the package).",
                  response=schemas.Report, errors=(401, 404, 503), tags=("reports",)),
        Operation("POST", f"{report}/rerun", rerun, "Validate a version again (admin).",
                  response=schemas.Report, status_code=202, errors=(401, 403, 404, 409, 503), tags=("reports",)),
        Operation("GET", "/rules", get_rules, "The admission rules in force.",
                  response=schemas.RulesView, errors=(401,), tags=("rules",)),
        Operation("PUT", "/rules", put_rules, "Replace the rules (admin); a field left out takes its default.",
                  body=schemas.RulesBody, response=schemas.RulesView, errors=(400, 401, 403), tags=("rules",)),
    ]  # fmt: skip
