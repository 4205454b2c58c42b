"""Billing: period close, invoices, the providers that issue them (Stripe, Paraşüt), exchange
rates, reconciliation and the hash-chained ledger. Jobs run on ``hoodrun.jobs``' queue."""
