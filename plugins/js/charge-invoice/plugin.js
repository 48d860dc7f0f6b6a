// Charges an invoice through a payment API, and shows each way an attempt can
// end.
//
// Input:
//   {"api": "https://payments.example.com", "invoice": "inv_42", "amount_cents": 1999,
//    "currency": "eur", "receipt": {"gate": "mail", "url": "https://mail.internal/receipts"}}
// (`receipt` is optional). It sends `POST {api}/v1/charges` with the task's
// idempotency key, so that a repeated attempt never charges twice, and reads
// the answer:
//
// | answer | outcome |
// |---|---|
// | 200, 201 | success: `{"charge": "ch_1", "status": "succeeded"}`, and the receipt task is created with it |
// | 402 | fail: `card declined (insufficient_funds)`; retrying would decline again |
// | 409 | retry in 5 s: another attempt with the same key is still in progress |
// | 429, 503 | retry after the answer's `Retry-After` (the backoff if none) |
// | other 5xx, timeout, connection error | retry after the backoff |
// | other 4xx | fail |
//
// The same job, contract and log lines as plugins/charge-invoice (Rust).

import { Fail, check, fail, log, plugin, retry, send } from '../../../sdk/js/index.js';

export const handler = plugin(async (ctx, input) => {
  check(input, {
    // The payment API's base URL.
    api: 'string',
    invoice: 'string',
    amount_cents: 'uint',
    currency: 'string',
    // Where to send the receipt once charged, if anywhere.
    'receipt?': { gate: 'string', url: 'string' },
  });
  // Timeouts and connection errors thrown by `send` retry.
  const response = await send(`${input.api.replace(/\/+$/, '')}/v1/charges`, {
    method: 'POST',
    headers: { 'idempotency-key': ctx.idempotencyKey, 'content-type': 'application/json' },
    body: JSON.stringify({ amount: input.amount_cents, currency: input.currency, invoice: input.invoice }),
  });
  const charge = decide(response);
  if (input.receipt) {
    // A webhook task created in the same commit as the successful charge.
    ctx.next({
      gate: input.receipt.gate,
      idempotency_key: `receipt:${input.invoice}`,
      webhook: { body: { charge: charge.charge, invoice: input.invoice }, url: input.receipt.url },
    });
  }
  return charge;
});

/** The payment API's answer, as the output or a thrown outcome (the table above). */
function decide(response) {
  const { status } = response;
  if (status === 200 || status === 201) {
    let charge;
    try {
      charge = check(response.json(), { id: 'string', status: 'string' }, {
        what: `answer from ${response.url} is not the JSON expected`,
        allowUnknown: true,
      });
    } catch (err) {
      // Charged, but the answer is not what we know how to read: do not
      // charge again, let a person look.
      throw fail(`charged, but ${err instanceof Fail ? err.reason : err.message}`);
    }
    log.info(`charged: ${charge.id} is ${charge.status}`);
    return { charge: charge.id, status: charge.status };
  }
  if (status === 402) {
    // The payment API's error body, e.g. `{"decline_code": "insufficient_funds"}`.
    let code = null;
    try {
      const declined = response.json();
      code = typeof declined?.decline_code === 'string' ? declined.decline_code : null;
    } catch {
      // No reason given.
    }
    log.warn(`declined: ${code ?? 'no reason given'}`);
    throw fail(code === null ? 'card declined' : `card declined (${code})`);
  }
  if (status === 409) {
    throw retry('another attempt with this idempotency key is in progress', { after: 5_000 });
  }
  if (status === 429 || status === 503) {
    throw retry(`payment API answered ${status}`, { after: response.retryAfter() });
  }
  if (status >= 500 && status <= 599) {
    throw retry(`payment API answered ${status}`);
  }
  throw fail(`payment API answered ${status}: ${response.text}`);
}
