"""``/webhooks/messenger``: the verification handshake (GET) and the events (POST).

A POST is answered 200 only once the dialogue service has taken every event
(ACCEPTED or DUPLICATE) or refused it as invalid; when it cannot take them,
503 (or 502 when it fails otherwise), so Messenger retries and the retry is
deduplicated. An invalid event is dropped, logged and counted: Messenger
would resend it for an hour, holding back the page's other users, and it
would never become valid. Nothing else happens inside the request: no NLU,
no chatlog.

Which secret checks a signature: the body's entries name the pages, and the
pages name the tenants, so with several apps the body is parsed first, the
secret is that of the tenants its entries name (all of one app, or 403), and
the check runs over the raw bytes. With one app secret the check runs before
parsing, so an unsigned body is never parsed. After the check, only entries of
pages of the app whose secret matched are queued: one app's secret never
vouches for another app's pages.
"""

from __future__ import annotations

import hmac
import time
from collections import Counter
from typing import Any

from chatbot.dialogue.v1 import dialogue_service_pb2 as dialogue_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from mesh import get_logger
from mesh.logging import hashed
from mesh.tenants import Tenant
from services.gateway.body import parse_json, read_body
from services.gateway.dialogue import BatchOutcome, DialogueClient, submit_batch
from services.gateway.errors import (
    DialogueError,
    DialogueUnavailable,
    GatewayError,
    MalformedBody,
    RequestError,
)
from services.gateway.messenger import signature as sig
from services.gateway.messenger.events import kind_label, parse_batch
from services.gateway.messenger.pages import PageDirectory
from services.gateway.metrics import GatewayMetrics
from services.gateway.responses import error_json, error_response
from services.gateway.settings import GatewaySettings

ROUTE = "/webhooks/messenger"
CHANNEL = "messenger"
_MAX_CHALLENGE = 2048
_log = get_logger("gateway.messenger")


class _Forbidden(GatewayError, status=403, code="forbidden"):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _secure_equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


class MessengerWebhook:
    def __init__(
        self,
        *,
        pages: PageDirectory,
        dialogue: DialogueClient,
        settings: GatewaySettings,
        metrics: GatewayMetrics,
    ) -> None:
        self._pages = pages
        self._dialogue = dialogue
        self._settings = settings
        self._metrics = metrics
        if not pages.secrets:
            _log.error(
                "no tenant has a Messenger app secret (MESSENGER_APP_SECRET): "
                "every webhook POST will be refused"
            )

    # ---- GET: the verification handshake -------------------------------------

    async def verify(self, request: Request) -> Response:
        params = request.query_params
        mode = params.get("hub.mode")
        token = params.get("hub.verify_token") or ""
        challenge = params.get("hub.challenge") or ""
        matched = False
        for expected in self._pages.verify_tokens:  # every token, no early exit
            matched |= _secure_equal(token, expected)
        if mode == "subscribe" and matched and 0 < len(challenge) <= _MAX_CHALLENGE:
            _log.info("webhook verification succeeded")
            return PlainTextResponse(challenge, headers={"X-Content-Type-Options": "nosniff"})
        reason = "mode" if mode != "subscribe" else "token" if not matched else "challenge"
        self._metrics.rejections.labels(ROUTE, f"verification_{reason}").inc()
        _log.warning("webhook verification refused", extra={"reason": reason})
        return PlainTextResponse("verification refused", status_code=403)

    # ---- POST: events ---------------------------------------------------------

    async def receive(self, request: Request) -> Response:
        started = time.perf_counter()
        response = await self._receive(request)
        self._metrics.ack_seconds.labels(str(response.status_code)).observe(
            time.perf_counter() - started
        )
        return response

    def _forbidden(self, error: _Forbidden) -> Response:
        self._metrics.signature_failures.labels(error.reason).inc()
        _log.warning("webhook signature refused", extra={"reason": error.reason})
        return error_json(error)

    def _reject(self, status: int, reason: str, message: str) -> Response:
        self._metrics.rejections.labels(ROUTE, reason).inc()
        _log.info("webhook refused", extra={"reason": reason, "status": status})
        return error_response(status, reason, message)

    async def _receive(self, request: Request) -> Response:
        if not self._pages.secrets:
            return self._forbidden(_Forbidden("no_secret", "no app secret is configured"))
        header = request.headers.get(sig.HEADER)
        signature = sig.parse_signature(header)
        if signature is None:
            reason = "missing" if header is None else "malformed"
            return self._forbidden(_Forbidden(reason, f"X-Hub-Signature-256 is {reason}"))
        try:
            raw = await read_body(request, self._settings.max_body_bytes)
            doc, secret = self._verified_document(raw, signature)
        except _Forbidden as exc:
            return self._forbidden(exc)
        except RequestError as exc:
            return self._reject(exc.status, exc.code, str(exc))
        if not isinstance(doc, dict):
            return self._reject(400, "not_an_object", "the body must be a JSON object")
        kind = doc.get("object")
        if kind != "page":
            if isinstance(kind, str):
                # Signed by Meta but for another product (instagram, user...):
                # acknowledged so Meta does not retry or disable the webhook.
                self._metrics.rejections.labels(ROUTE, "object_not_page").inc()
                _log.info("webhook for another object ignored", extra={"object": kind[:64]})
                return JSONResponse({"events": 0, "ignored": f"object {kind[:64]!r}"})
            return self._reject(400, "no_object", 'the body needs "object": "page"')
        if not isinstance(doc.get("entry"), list):
            return self._reject(400, "no_entry", 'the body needs an "entry" list')
        return await self._submit(doc, secret)

    def _verified_document(self, raw: bytes, signature: bytes) -> tuple[Any, str]:
        """The parsed body and the secret that signed it, or _Forbidden / MalformedBody."""
        secrets = self._pages.secrets
        if len(secrets) == 1:
            if not sig.matches(secrets[0], raw, signature):
                raise _Forbidden("mismatch", "the signature does not match")
            return parse_json(raw), secrets[0]
        try:
            doc = parse_json(raw)
        except MalformedBody:
            if any(sig.matches(s, raw, signature) for s in secrets):
                raise  # signed but malformed: 400, not 403
            raise _Forbidden("mismatch", "the signature does not match") from None
        named = self._named_secrets(doc)
        for secret in named or secrets:
            if sig.matches(secret, raw, signature):
                return doc, secret
        raise _Forbidden("mismatch", "the signature does not match")

    def _named_secrets(self, doc: Any) -> tuple[str, ...]:
        """The app secret of the tenants the entries name; () when they name none."""
        entries = doc.get("entry") if isinstance(doc, dict) else None
        if not isinstance(entries, list):
            return ()
        tenants: dict[str, Tenant] = {}
        for entry in entries:
            page = entry.get("id") if isinstance(entry, dict) else None
            tenant = self._pages.tenant_for(str(page)) if isinstance(page, str | int) else None
            if tenant is not None:
                tenants[tenant.id] = tenant
        secrets = {t.app_secret for t in tenants.values()}
        if "" in secrets:
            raise _Forbidden("no_secret", "a page of this body has no app secret configured")
        if len(secrets) > 1:
            raise _Forbidden("mixed_apps", "the body names pages of different apps")
        return tuple(secrets)

    async def _submit(self, doc: dict[str, Any], secret: str) -> Response:
        def resolve(page_id: str) -> Tenant | None:
            tenant = self._pages.tenant_for(page_id)
            return tenant if tenant is not None and tenant.app_secret == secret else None

        receive_time = Timestamp()
        receive_time.GetCurrentTime()
        batch = parse_batch(doc, resolve, receive_time)
        for page in dict.fromkeys(batch.unknown_pages):
            self._metrics.rejections.labels(ROUTE, "unknown_page").inc()
            _log.warning("webhook entry for a page of no tenant dropped", extra={"page_id": page})
        if batch.skipped:
            # One line per batch, not per item: a batch holds up to 1000.
            reasons = Counter(skipped.reason for skipped in batch.skipped)
            for reason, count in reasons.items():
                self._metrics.rejections.labels(ROUTE, reason).inc(count)
            first = batch.skipped[0]
            _log.warning(
                "webhook items dropped",
                extra={"reasons": dict(reasons), "first": [first.entry, first.index]},
            )
        unknown = Counter(e.unknown.kind[:64] for e in batch.events if e.HasField("unknown"))
        if unknown:
            _log.info(
                "unknown Messenger event kinds: recorded, not answered",
                extra={"kinds": dict(unknown)},
            )
        if not batch.events:
            return JSONResponse({"events": 0, "skipped": len(batch.skipped)})
        started = time.perf_counter()
        try:
            submitted = await submit_batch(
                self._dialogue,
                batch.events,
                timeout=self._settings.submit_timeout,
                max_events=self._settings.submit_chunk_events,
                max_bytes=self._settings.submit_chunk_bytes,
            )
        except DialogueError as exc:
            unavailable = isinstance(exc, DialogueUnavailable)
            outcome = "unavailable" if unavailable else "failed"
            self._metrics.dialogue_seconds.labels("SubmitEvents", outcome).observe(
                time.perf_counter() - started
            )
            self._metrics.rejections.labels(ROUTE, f"dialogue_{outcome}").inc()
            (_log.warning if unavailable else _log.error)(
                "events not accepted: Messenger will retry",
                extra={"events": len(batch.events), "error": str(exc)},
            )
            # Any failure, a refusal or a timeout included, asks Messenger to retry.
            answer = DialogueUnavailable if unavailable else DialogueError
            return error_response(
                answer.status,
                answer.code,
                "the events could not be queued; retry",
                headers={"Retry-After": str(self._settings.retry_after_seconds)},
            )
        self._metrics.dialogue_seconds.labels("SubmitEvents", "ok").observe(
            time.perf_counter() - started
        )
        if submitted.refused:
            self._log_refused(submitted)
        kinds: Counter[str] = Counter()
        duplicates = 0
        for event, result in submitted.results:
            if result.status == dialogue_pb2.SUBMIT_STATUS_DUPLICATE:
                duplicates += 1
            else:
                kinds[kind_label(event)] += 1
        for kind, count in kinds.items():
            self._metrics.events.labels(CHANNEL, kind).inc(count)
        if duplicates:
            self._metrics.duplicates.labels(CHANNEL).inc(duplicates)
        # Per delivery, so at DEBUG: the counters above carry the same at every level.
        _log.debug(
            "webhook acknowledged",
            extra={
                "events": len(batch.events),
                "duplicates": duplicates,
                "refused": len(submitted.refused),
                "skipped": len(batch.skipped),
            },
        )
        return JSONResponse(
            {
                "events": len(batch.events),
                "accepted": len(submitted.results) - duplicates,
                "duplicates": duplicates,
                "refused": len(submitted.refused),
                "skipped": len(batch.skipped),
            }
        )

    def _log_refused(self, outcome: BatchOutcome) -> None:
        reasons = Counter(refusal.reason for refusal in outcome.refused)
        for reason, count in reasons.items():
            self._metrics.rejections.labels(ROUTE, f"dialogue_{reason}").inc(count)
        # One line per batch (a batch holds up to 1000), naming the first few.
        _log.warning(
            "events refused by the dialogue service as invalid: dropped",
            extra={
                "reasons": dict(reasons),
                "refused": [
                    {
                        "event_id": refusal.event.event_id[:80],
                        "tenant": refusal.event.user.tenant_id,
                        "user": hashed(refusal.event.user.user_id),
                        "reason": refusal.reason,
                        "detail": refusal.detail,
                    }
                    for refusal in outcome.refused[:5]
                ],
            },
        )
