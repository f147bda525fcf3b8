"""The confirmation of a sync run (Lexer's confirmation email): a per-audience summary by email and webhook.

Every run (succeeded, partial, blocked, failed, dry run) is summarised. The summary goes to the SMTP
recipients (``LEXER_NOTIFY_SMTP_HOST/PORT/FROM/TO``) and/or as JSON to a webhook (``LEXER_NOTIFY_WEBHOOK_URL``),
and always to the run report in the store (``sync.braze_sync_reports``, written by the sync). Delivery
problems never fail the sync: they are returned, logged and noted on the report row. The webhook URL is
treated as a secret (chat webhooks embed a token): it never appears in messages.
"""

from __future__ import annotations

import smtplib
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage

import httpx

from lexer_assets.sync.audience_sync import SyncReport, audience_summary


@dataclass(frozen=True)
class NotifyConfig:
    smtp_host: str = ""
    smtp_port: int = 25
    sender: str = "lexer-assets@localhost"
    recipients: tuple[str, ...] = ()
    webhook_url: str = ""
    timeout_s: float = 10.0

    def __repr__(self) -> str:
        return (f"NotifyConfig(smtp_host={self.smtp_host!r}, smtp_port={self.smtp_port}, "
                f"recipients={self.recipients!r}, webhook={'set' if self.webhook_url else 'none'})")


def subject(report: SyncReport, attribute: str) -> str:
    kind = "dry run" if report.dry_run else "sync"
    shard = "" if report.shard == "all" else f" (shard {report.shard})"
    return (f"[lexer-assets] Braze {kind}{shard} {report.status}: {report.diff.adds:,} adds, "
            f"{report.diff.removes:,} removes on {attribute}")


def summary_text(report: SyncReport, attribute: str) -> str:
    """Plain-text body: the run's totals, then one line per audience."""
    lines = [
        f"Run {report.run_id} ({'dry run, nothing sent' if report.dry_run else 'sync'}), attribute {attribute}, "
        f"{'all customers' if report.shard == 'all' else 'shard ' + report.shard}: {report.status.upper()}",
        f"Customers changed: {report.diff.customers:,}; adds {report.diff.adds:,}; removes {report.diff.removes:,}",
        f"Confirmed by Braze: {report.done:,}; refused: {report.failed + report.rejected:,}; "
        f"pending (retried next run): {report.pending:,}; parked: {report.parked:,}",
        f"Requests: {report.requests_estimate if report.dry_run else report.requests:,}"
        f"{' (estimated)' if report.dry_run else ''}",
    ]
    if report.diff.capped_customers:
        lines.append(f"Array cap: {report.diff.capped_customers:,} customers capped; held back "
                     + ", ".join(f"{v} ({n:,})" for v, n in report.diff.held_back.items()))
    if report.guard:
        lines.append(f"Safety guard: {report.guard}")
    if report.error:
        lines.append(f"Error: {report.error}")
    if report.failure_reasons:
        lines.append("Refusals: " + "; ".join(f"{k} x{n:,}" for k, n in sorted(report.failure_reasons.items())))
    lines.append("")
    lines.append(f"{'audience':30} {'snapshot':10} {'members':>9} {'adds':>8} {'removes':>8} {'sent':>8} "
                 f"{'failed':>7}  note")
    for a in report.audiences:
        lines.append(f"{a.audience_name[:30]:30} {str(a.snapshot_date or '-'):10} {a.members:>9,} {a.adds:>8,} "
                     f"{a.removes:>8,} {a.sent:>8,} {a.failed:>7,}  {a.note}")
    return "\n".join(lines) + "\n"


def payload(report: SyncReport, attribute: str) -> dict:
    """The webhook's JSON body."""
    return {
        "run_id": report.run_id, "attribute": attribute, "kind": "dry_run" if report.dry_run else "sync",
        "status": report.status, "shard": report.shard, "customers_changed": report.diff.customers,
        "adds": report.diff.adds, "removes": report.diff.removes, "confirmed": report.done,
        "failed": report.failed + report.rejected, "pending": report.pending, "parked": report.parked,
        "reconciled": report.reconciled, "capped_customers": report.diff.capped_customers,
        "held_back": report.diff.held_back,
        "requests": report.requests_estimate if report.dry_run else report.requests,
        "guard": report.guard, "error": report.error, "audiences": audience_summary(report),
        "text": summary_text(report, attribute),
    }


def send_email(config: NotifyConfig, subject_line: str, body: str) -> None:
    message = EmailMessage()
    message["Subject"] = subject_line
    message["From"] = config.sender
    message["To"] = ", ".join(config.recipients)
    message.set_content(body)
    with smtplib.SMTP(config.smtp_host, config.smtp_port, timeout=config.timeout_s) as smtp:
        smtp.send_message(message)


def post_webhook(config: NotifyConfig, body: dict) -> None:
    response = httpx.post(config.webhook_url, json=body, timeout=config.timeout_s)
    if response.status_code >= 300:
        raise RuntimeError(f"webhook answered HTTP {response.status_code}")


def notify(report: SyncReport, attribute: str, config: NotifyConfig) -> list[str]:
    """Send the confirmation where configured; returns one line per channel ('email: sent to 2', or the
    error). Never raises: a delivery problem must not undo or fail a sync."""
    outcomes: list[str] = []
    if config.smtp_host and config.recipients:
        try:
            send_email(config, subject(report, attribute), summary_text(report, attribute))
            outcomes.append(f"email: sent to {len(config.recipients)} recipient(s)")
        except (OSError, smtplib.SMTPException) as exc:
            outcomes.append(f"email: not delivered ({type(exc).__name__}: {str(exc)[:200]})")
    if config.webhook_url:
        try:
            post_webhook(config, payload(report, attribute))
            outcomes.append("webhook: delivered")
        except (httpx.HTTPError, RuntimeError) as exc:
            # The URL may hold a token: name the error type and status, never the URL.
            text = str(exc) if isinstance(exc, RuntimeError) else type(exc).__name__
            outcomes.append(f"webhook: not delivered ({text})")
    if not outcomes:
        outcomes.append("no email or webhook configured (report stored only)")
    return outcomes


def recipients_from(value: str | Sequence[str]) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(a.strip() for a in items if a.strip())
