"""Charges an invoice through a payment API, and shows each way an attempt can end.

Input::

    {"api": "https://payments.example.com", "invoice": "inv_42", "amount_cents": 1999,
     "currency": "eur", "receipt": {"gate": "mail", "url": "https://mail.internal/receipts"}}

(``receipt`` is optional). It sends ``POST {api}/v1/charges`` with the task's
idempotency key, so that a repeated attempt never charges twice, and reads
the answer:

=====================================  =====================================================
answer                                 outcome
=====================================  =====================================================
200, 201                               success: ``{"charge": "ch_1", "status": "succeeded"}``,
                                       and the receipt task is created with it
402                                    fail: ``card declined (insufficient_funds)``; retrying
                                       would decline again
409                                    retry in 5 s: another attempt with the same key is
                                       still in progress
429, 503                               retry after the answer's ``Retry-After`` (the backoff
                                       if none)
other 5xx, timeout, connection error   retry after the backoff
other 4xx, a denied host               fail
=====================================  =====================================================

The Python twin of ``plugins/charge-invoice`` (Rust): the same input, request
(body ``{"invoice", "amount", "currency"}``, headers ``idempotency-key`` and
``content-type: application/json``), log lines, output, receipt task and
outcomes.
"""

from __future__ import annotations

from dataclasses import dataclass

from sluice_sdk import Context, Fail, HttpError, Response, Retry, http, log, plugin, to_json


@dataclass
class Receipt:
    """A webhook task created in the same commit as the successful charge."""

    gate: str
    url: str


@dataclass
class Input:
    #: The payment API's base URL.
    api: str
    invoice: str
    amount_cents: int
    currency: str
    #: Where to send the receipt once charged, if anywhere.
    receipt: Receipt | None = None


@dataclass
class Charge:
    """The payment API's answer to a charge (other fields are ignored)."""

    id: str
    status: str


@dataclass
class Declined:
    """The payment API's error body, e.g. ``{"decline_code": "insufficient_funds"}``."""

    decline_code: str | None = None


def run(ctx: Context, input: Input) -> dict[str, str]:
    if input.amount_cents < 0:
        raise Fail(f"invalid input: amount_cents: invalid value: integer `{input.amount_cents}`, expected u64")
    body = {"invoice": input.invoice, "amount": input.amount_cents, "currency": input.currency}
    # Timeouts and connection errors retry; a host the gate denies fails (the
    # HttpError escapes, and the SDK decides as for a webhook).
    response = http.post(
        f"{input.api.rstrip('/')}/v1/charges",
        to_json(body),
        headers={"idempotency-key": ctx.idempotency_key, "content-type": "application/json"},
    )
    charge = decide(response)
    if input.receipt is not None:
        ctx.next(
            {
                "gate": input.receipt.gate,
                "webhook": {
                    "url": input.receipt.url,
                    "body": {"invoice": input.invoice, "charge": charge["charge"]},
                },
                "idempotency_key": f"receipt:{input.invoice}",
            }
        )
    return charge


def decide(response: Response) -> dict[str, str]:
    """The payment API's answer, as an outcome (the table above): the output on
    success, else raises :class:`Retry` or :class:`Fail`."""
    status = response.status
    if status in (200, 201):
        try:
            charge = response.json(into=Charge)
        except HttpError as err:
            # Charged, but the answer is not what we know how to read: do not
            # charge again, let a person look.
            raise Fail(f"charged, but {err}") from None
        log.info(f"charged: {charge.id} is {charge.status}")
        return {"charge": charge.id, "status": charge.status}
    if status == 402:
        try:
            code = response.json(into=Declined).decline_code
        except HttpError:
            code = None
        log.warn(f"declined: {code if code is not None else 'no reason given'}")
        raise Fail(f"card declined ({code})" if code is not None else "card declined")
    if status == 409:
        raise Retry("another attempt with this idempotency key is in progress", after=5)
    if status in (429, 503):
        raise Retry(f"payment API answered {status}", after=response.retry_after())
    if 500 <= status <= 599:
        raise Retry(f"payment API answered {status}")
    raise Fail(f"payment API answered {status}: {response.text()}")


Handler = plugin(run, input=Input)
