"""The lab's wallet, on the gateway's port (the wallet contract in docs/contracts.md): it pays payees
registered with it by reference. No invoice, key or address ever crosses the wire.

- `POST /wallet/pay {payee_ref, amount_sats, purpose}` (header `Idempotency-Key`): 200 with the payment
  (`state: settled`); the same key again answers the same payment and pays nothing more. 404
  `unknown_payee`, 409 `over_limit` (more than `max_payment_sats`) or `insufficient_funds`.
- `GET /wallet/payments?idempotency_key=K`: one payment, or 404.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web

from overseer_dagster.lab.serving import json_response

PURPOSES = ("scale_out_deposit", "provider_invoice")
LAB_PAYEES = ("payee-lab",)


@dataclass
class LabPayment:
    payment_id: str
    payee_ref: str
    amount_sats: int
    purpose: str
    state: str
    idempotency_key: str | None = None

    def public(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "idempotency_key"}


def _error(kind: str, message: str, status: int) -> web.Response:
    return json_response({"error": {"type": kind, "message": message}}, status=status)


class LabWallet:
    def __init__(self, payees: Iterable[str] = LAB_PAYEES, *, balance_sats: int = 1_000_000,
                 max_payment_sats: int = 100_000) -> None:
        self.payees = frozenset(payees)
        self.balance_sats = balance_sats
        self.max_payment_sats = max_payment_sats
        self.payments: list[LabPayment] = []
        self._by_key: dict[str, LabPayment] = {}
        self._lock = asyncio.Lock()

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/wallet/pay", self._pay)
        app.router.add_get("/wallet/payments", self._find)

    async def _pay(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
            payee, amount, purpose = body["payee_ref"], body["amount_sats"], body["purpose"]
            if not (isinstance(payee, str) and type(amount) is int and purpose in PURPOSES):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return _error("bad_request", "expected {payee_ref: str, amount_sats: int, purpose}", 400)
        key = request.headers.get("Idempotency-Key")
        async with self._lock:
            if key and key in self._by_key:
                return json_response(self._by_key[key].public())
            if payee not in self.payees:
                return _error("unknown_payee", "no payee registered under that reference", 404)
            if not 1 <= amount <= self.max_payment_sats:
                return _error("over_limit", f"a payment is 1 to {self.max_payment_sats} sats", 409)
            if amount > self.balance_sats:
                return _error("insufficient_funds", "the balance does not cover it", 409)
            self.balance_sats -= amount
            payment = LabPayment(f"pay-{len(self.payments) + 1:04d}", payee, amount, purpose, "settled", key)
            self.payments.append(payment)
            if key:
                self._by_key[key] = payment
        return json_response(payment.public())

    async def _find(self, request: web.Request) -> web.Response:
        payment = self._by_key.get(request.query.get("idempotency_key", ""))
        if payment is None:
            return _error("unknown_payment", "no such payment", 404)
        return json_response(payment.public())
