"""Dossier transfer (overdracht): a child's whole dossier, signed, encrypted and sent to another
JGZ organisation, imported there exactly once. See `../shared/jgz/TRANSFER.md` and issue #7.

The parts, in the order a transfer meets them:

- `states`: the sender's state machine (prepared → consent-checked → packaged → queued → sent →
  accepted → imported | rejected; failed-retryable → dead-letter; cancelled; invalid).
- `consent`: the objection check, before packaging and again right before dispatch.
- `package`: the message Bundle (MessageHeader as envelope, the dossier, a Provenance).
- `seal`: RFC 8785 canonical form, detached JWS, JWE, receipts; allow-lists for all of it.
- `sender`: starts transfers and moves them through packaging into the outbox.
- `outbox`: sends what the outbox holds to the relay, with backoff; identical bytes each time.
- `inbox`: accepts deliveries from the relay, deduplicated, and answers with a signed receipt.
- `importer`: decrypts, verifies, validates, matches the child and imports in one transaction.
- `bulk`: cohorts of children (a GGD's yearly intake), resumable, with a report.
- `worker`: the loop that runs outbox, inbox and bulk work inside `ekd serve`.

The simulated national infrastructure (test PKI, directory, relay) is `ekd.exchange`.
"""
