"""``chatbot messenger-profile``: a page's Get Started button, greeting, menu and ice breakers.

The domain file's ``messenger_profile`` section says what the page should show
(``services/dialogue/messenger_profile.py`` describes it); ``apply`` makes the
page match through the Messenger Profile API, ``show`` prints what is set,
``diff`` prints what ``apply`` would change and exits 1 when anything would
(for CI). A page allows 10 profile calls per 10 minutes, so ``apply`` reads
once and writes at most twice (one POST for what it sets, one DELETE for what
it removes).

The page token goes in the Authorization header, as the Send API client sends
it, never in a URL or on the screen; ``appsecret_proof`` goes with every call
when the tenant's app secret is known.

Errors::

    ProfileError            a call did not do what was asked
    ├── GraphRefused        the Graph API answered with an error (code, subcode)
    └── GraphUnreachable    no answer: refused connection, DNS, time-out
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
import yaml

if TYPE_CHECKING:
    import httpx

    from mesh.tenants import Tenant
    from services.dialogue.domain import Domain

PATH = "/me/messenger_profile"
DIFFERENT = 1  # diff's exit code when the page differs from the domain file
FAILED = 2  # any error: configuration, validation, the Graph API

messenger_profile_app = typer.Typer(
    help=(
        "Set a page's Get Started button, greeting, persistent menu and ice breakers from the "
        "domain file's messenger_profile section (Messenger Profile API). The page token and app "
        "secret are the tenant's: TENANTS_FILE, or MESSENGER_PAGE_ACCESS_TOKEN and "
        "MESSENGER_APP_SECRET (or their _FILE). Exit codes: 0 done or no difference, 1 `diff` "
        "found differences, 2 an error."
    ),
    no_args_is_help=True,
)


class ProfileError(Exception):
    """A Messenger Profile API call did not do what was asked."""


class GraphRefused(ProfileError):
    def __init__(self, status: int, code: int, subcode: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.subcode = subcode
        self.message = message

    def explain(self) -> str:
        what = f"HTTP {self.status}, code {self.code}" + (
            f", subcode {self.subcode}" if self.subcode else ""
        )
        hint = _hint(self.status, self.code, self.subcode, self.message)
        return f"the Graph API refused the call ({what}): {self.message}" + (
            f"\n  {hint}" if hint else ""
        )


class GraphUnreachable(ProfileError):
    """No answer from the Graph API."""


def _hint(status: int, code: int, subcode: int, message: str) -> str:
    if code == 190:
        return "The page access token is invalid or has expired: give the tenant a new one."
    if code == 100 and "appsecret_proof" in message:
        return (
            "The app secret does not belong to the page token's app (appsecret_proof): "
            "check the tenant's app_secret."
        )
    if code == 100 and subcode == 2018145:
        return "A persistent menu needs a Get Started button: set get_started too."
    if code == 100:
        return "Meta refused a parameter; the message above names it."
    if code in (10, 200) or 200 <= code < 300:
        return (
            "The token lacks the pages_messaging permission, or its user is not an "
            "administrator of the page."
        )
    if code in (4, 32, 613):
        return (
            "Rate limited: the Messenger Profile API allows 10 calls per 10 minutes per page. "
            "Try again later."
        )
    if status >= 500 or code in (1, 2):
        return "A temporary failure at Meta: try again."
    return ""


class MessengerProfileClient:
    """The Messenger Profile API for one tenant's page; ``http`` may carry any transport."""

    def __init__(self, http: httpx.Client, graph_api_url: str, tenant: Tenant) -> None:
        from mesh.graph import graph_params

        self._http = http
        self._url = graph_api_url.rstrip("/") + PATH
        self._token = tenant.page_access_token
        self._params = graph_params(tenant)

    def get(self, fields: tuple[str, ...]) -> dict[str, Any]:
        """The fields that are set, as the API answers them."""
        answer = self._call("GET", params={"fields": ",".join(fields)})
        data = answer.get("data")
        if not isinstance(data, list):
            raise ProfileError(f"unexpected answer from the Graph API: {_shorten(answer)}")
        merged: dict[str, Any] = {}
        for entry in data:
            if isinstance(entry, dict):
                merged.update(entry)
        return {k: v for k, v in merged.items() if k in fields}

    def set(self, fields: dict[str, Any]) -> None:
        self._expect_success(self._call("POST", body=fields))

    def delete(self, fields: list[str]) -> None:
        self._expect_success(self._call("DELETE", body={"fields": fields}))

    def _expect_success(self, answer: dict[str, Any]) -> None:
        if answer.get("result") != "success":
            raise ProfileError(f"unexpected answer from the Graph API: {_shorten(answer)}")

    def _call(
        self, method: str, *, params: dict[str, str] | None = None, body: object = None
    ) -> dict[str, Any]:
        import httpx

        try:
            response = self._http.request(
                method,
                self._url,
                params={**(params or {}), **self._params},
                headers={"Authorization": f"Bearer {self._token}"},
                json=body,
            )
        except httpx.HTTPError as exc:
            raise GraphUnreachable(
                f"the Graph API at {self._url} cannot be reached: {type(exc).__name__}"
            ) from exc
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.status_code != 200:
            error = answer.get("error") if isinstance(answer, dict) else None
            if not isinstance(error, dict):
                raise GraphRefused(response.status_code, 0, 0, _shorten(response.text))
            raise GraphRefused(
                response.status_code,
                _int(error.get("code")),
                _int(error.get("error_subcode")),
                str(error.get("message") or ""),
            )
        if not isinstance(answer, dict):
            raise ProfileError(f"unexpected answer from the Graph API: {_shorten(response.text)}")
        return answer


def _int(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def _shorten(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:300]


# ---- the commands -------------------------------------------------------------

TenantId = Annotated[
    str, typer.Option("--tenant", help="the tenant whose page it is (default: the only one)")
]
TenantsFile = Annotated[
    Path | None,
    typer.Option(
        envvar="TENANTS_FILE", help="the tenants file (else the tenant from the environment)"
    ),
]
DomainFile = Annotated[
    Path | None,
    typer.Option(
        "--domain", help="this domain file instead of the tenant's (e.g. before deploying it)"
    ),
]
GraphUrl = Annotated[
    str,
    typer.Option(
        envvar="MESSENGER_GRAPH_API_URL",
        help="the Graph API's base URL, version included [default: Meta's, v21.0]",
    ),
]
Timeout = Annotated[float, typer.Option(help="seconds to wait for each call")]


def _fail(message: str, *secrets: str) -> NoReturn:
    from mesh.logging import redact

    text = redact(message)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    typer.echo(f"error: {text}", err=True)
    raise typer.Exit(FAILED)


def _tenant(tenant_id: str, tenants_file: Path | None) -> Tenant:
    from mesh.config import ConfigError
    from mesh.tenants import Tenants

    try:
        tenants = Tenants.from_file(tenants_file) if tenants_file else Tenants.from_env()
    except ConfigError as exc:
        _fail(str(exc))
    if not tenant_id:
        if len(tenants) > 1:
            _fail(f"name the tenant with --tenant ({', '.join(t.id for t in tenants)})")
        tenant_id = next(iter(tenants)).id
    tenant = tenants.get(tenant_id)
    if tenant is None:
        _fail(f"no tenant {tenant_id!r} (known: {', '.join(t.id for t in tenants)})")
    if not tenant.page_access_token:
        _fail(
            f"tenant {tenant.id} has no page access token (MESSENGER_PAGE_ACCESS_TOKEN or "
            "MESSENGER_PAGE_ACCESS_TOKEN_FILE, or page_access_token in the tenants file)"
        )
    return tenant


def _domain(tenant: Tenant, domain_file: Path | None) -> tuple[Domain, Path]:
    from mesh.config import ConfigError
    from services.dialogue.domain import DEFAULT_DOMAIN, load_domain

    path = domain_file or (Path(tenant.domain) if tenant.domain else DEFAULT_DOMAIN)
    try:
        domain = load_domain(path)
    except ConfigError as exc:
        _fail(str(exc))
    if domain.messenger_profile is None:
        _fail(
            f"{path} has no messenger_profile section: nothing to set "
            "(`messenger_profile: {}` removes the page's profile)"
        )
    return domain, path


def _warn_unrouted(domain: Domain) -> None:
    """Payloads that name no intent reach the NLU as text: almost always a typo."""
    assert domain.messenger_profile is not None
    known = {*domain.responses, *domain.intent_actions, domain.handoff_intent}
    for where, payload in domain.messenger_profile.payloads():
        # As the dialogue reads a payload: /intent{"entity": ...}, or one named in `payloads:`.
        if payload.startswith("/"):
            intent = payload[1:].partition("{")[0].strip()
        else:
            intent = domain.payloads.get(payload, "")
        if intent not in known:
            typer.echo(
                f"warning: messenger_profile.{where}: payload {payload!r} names no intent of "
                "the domain (add it to `payloads:` or use /intent)",
                err=True,
            )


def _http(timeout: float) -> httpx.Client:
    import httpx

    return httpx.Client(timeout=timeout)


def _client(http: httpx.Client, graph_api_url: str, tenant: Tenant) -> MessengerProfileClient:
    return MessengerProfileClient(http, graph_api_url, tenant)


def _current(client: MessengerProfileClient, tenant: Tenant) -> dict[str, Any]:
    from services.dialogue.messenger_profile import FIELDS

    try:
        return client.get(FIELDS)
    except ProfileError as exc:
        _fail(_explain(exc), tenant.page_access_token)


def _explain(exc: ProfileError) -> str:
    return exc.explain() if isinstance(exc, GraphRefused) else str(exc)


def _yaml(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True, width=100)


def _print_changes(changes: list[Any], domain_path: Path) -> None:
    marks = {"set": "+", "remove": "-", "change": "~"}
    for change in changes:
        typer.echo(f"{marks[change.kind]} {change.field} ({change.kind})")
        before = _yaml(change.before).splitlines() if change.before is not None else []
        after = _yaml(change.after).splitlines() if change.after is not None else []
        lines = difflib.unified_diff(
            before, after, fromfile="page", tofile=str(domain_path), lineterm="", n=2
        )
        for line in lines:
            typer.echo(f"    {line}")


def _graph_url(value: str | None) -> str:
    from mesh.graph import DEFAULT_GRAPH_API_URL

    return value or DEFAULT_GRAPH_API_URL


@messenger_profile_app.command()
def show(
    tenant_id: TenantId = "",
    tenants_file: TenantsFile = None,
    graph_api_url: GraphUrl = "",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of YAML")] = False,
    timeout: Timeout = 10.0,
) -> None:
    """Print the Get Started button, greeting, menu and ice breakers the page has now."""
    from services.dialogue.messenger_profile import FIELDS, canonical

    tenant = _tenant(tenant_id, tenants_file)
    with _http(timeout) as http:
        current = _current(_client(http, _graph_url(graph_api_url), tenant), tenant)
    shown = {f: canonical(f, current[f]) for f in FIELDS if current.get(f)}
    if as_json:
        typer.echo(json.dumps(shown, indent=2, ensure_ascii=False))
    elif not shown:
        typer.echo(
            f"{tenant.id}: the page has no Get Started button, greeting, menu or ice breakers"
        )
    else:
        typer.echo(_yaml(shown), nl=False)


@messenger_profile_app.command()
def diff(
    tenant_id: TenantId = "",
    tenants_file: TenantsFile = None,
    domain_file: DomainFile = None,
    graph_api_url: GraphUrl = "",
    timeout: Timeout = 10.0,
) -> None:
    """Print what `apply` would change on the page; exit 1 if anything, 0 if it matches."""
    from services.dialogue.messenger_profile import changes

    tenant = _tenant(tenant_id, tenants_file)
    domain, path = _domain(tenant, domain_file)
    assert domain.messenger_profile is not None
    _warn_unrouted(domain)
    with _http(timeout) as http:
        current = _current(_client(http, _graph_url(graph_api_url), tenant), tenant)
    found = changes(domain.messenger_profile.graph(), current)
    if not found:
        typer.echo(f"{tenant.id}: the page matches {path}")
        return
    _print_changes(found, path)
    raise typer.Exit(DIFFERENT)


@messenger_profile_app.command()
def apply(
    tenant_id: TenantId = "",
    tenants_file: TenantsFile = None,
    domain_file: DomainFile = None,
    graph_api_url: GraphUrl = "",
    timeout: Timeout = 10.0,
) -> None:
    """Make the page's Get Started button, greeting, menu and ice breakers match the domain file.

    Fields the section leaves out are removed from the page; the page's other
    settings are not touched. Nothing is written when the page already matches.
    """
    from services.dialogue.messenger_profile import changes

    tenant = _tenant(tenant_id, tenants_file)
    domain, path = _domain(tenant, domain_file)
    assert domain.messenger_profile is not None
    _warn_unrouted(domain)
    desired = domain.messenger_profile.graph()
    with _http(timeout) as http:
        client = _client(http, _graph_url(graph_api_url), tenant)
        found = changes(desired, _current(client, tenant))
        if not found:
            typer.echo(f"{tenant.id}: the page already matches {path}; nothing to change")
            return
        to_set = {c.field: desired[c.field] for c in found if c.after is not None}
        to_remove = [c.field for c in found if c.after is None]
        done: list[str] = []
        try:
            if to_set:
                client.set(to_set)
                done += to_set
            if to_remove:
                client.delete(to_remove)
        except ProfileError as exc:
            text = _explain(exc)
            if done:
                text += f"\n  Already set: {', '.join(done)}; `apply` again does the rest."
            _fail(text, tenant.page_access_token)
    for change in found:
        typer.echo(f"{tenant.id}: {change.field} {_DONE[change.kind]}")


_DONE = {"set": "set", "change": "updated", "remove": "removed"}
