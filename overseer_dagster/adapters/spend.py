"""The actuators that spend: a GPU provider (`request_scale_out`, its `scale_in` rollback) and a wallet
(`wallet_spend`). Each is called only by the gated dispatch (`overseer_dagster.gated`), after an
operator's signed approval of the exact action; contracts in docs/contracts.md.

Every call carries `Idempotency-Key: <action id>`: the same action asked twice is one allocation or one
payment, and `find` looks it up by that key (how a crashed dispatch is reconciled without acting again).
The wallet pays a payee by its pre-registered reference: the overseer never sees an invoice or a key.
Failures are `ActuatorError`s with short reason codes and public-safe messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from overseer_dagster.adapters.actuators import ActuatorError

SPEND_TIMEOUT_S = 10.0
IDEMPOTENCY_HEADER = "Idempotency-Key"


# --- provider ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Allocation:
    allocation_id: str
    gpu_class: str
    count: int
    hourly_usd: float
    state: str  # provisioning | ready | released
    replica_ids: tuple[str, ...] = ()


class Provider(Protocol):
    def scale_out(self, *, gpu_class: str, count: int, max_hourly_usd: float, idempotency_key: str) -> Allocation: ...

    def release(self, allocation_id: str) -> Allocation: ...

    def find(self, idempotency_key: str) -> Allocation | None: ...


@dataclass(frozen=True, slots=True)
class Payment:
    payment_id: str
    payee_ref: str
    amount_sats: int
    purpose: str
    state: str  # settled | pending


class Wallet(Protocol):
    def pay(self, *, payee_ref: str, amount_sats: int, purpose: str, idempotency_key: str) -> Payment: ...

    def find(self, idempotency_key: str) -> Payment | None: ...


# --- HTTP ----------------------------------------------------------------------------------------


def _service_error(service: str, exc: httpx.HTTPError | None, response: httpx.Response | None,
                   what: str) -> ActuatorError:
    if isinstance(exc, httpx.TimeoutException):
        return ActuatorError(f"{service}_timeout", f"{what}: the {service} did not answer in time")
    if exc is not None:
        return ActuatorError(f"{service}_unreachable", f"{what}: the {service} is unreachable ({type(exc).__name__})")
    assert response is not None
    error_type = None
    try:
        body = response.json()
        error_type = body.get("error", {}).get("type") if isinstance(body, dict) else None
    except ValueError:
        pass
    if response.status_code >= 500:
        return ActuatorError(f"{service}_error", f"{what}: the {service} answered {response.status_code}")
    if isinstance(error_type, str) and error_type.replace("_", "").isalnum() and len(error_type) <= 40:
        return ActuatorError(error_type, f"{what}: the {service} refused ({error_type})")
    return ActuatorError(f"{service}_refused", f"{what}: the {service} answered {response.status_code}")


class _Http:
    service = "service"

    def __init__(self, base_url: str, *, timeout_s: float = SPEND_TIMEOUT_S,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.transport = transport

    def _call(self, method: str, path: str, what: str, *, body: dict | None = None, key: str | None = None,
              params: dict | None = None, missing_ok: bool = False) -> dict[str, Any] | None:
        headers = {IDEMPOTENCY_HEADER: key} if key else {}
        try:
            with httpx.Client(timeout=self.timeout_s, transport=self.transport) as client:
                response = client.request(method, f"{self.base_url}{path}", json=body, headers=headers, params=params)
        except httpx.HTTPError as exc:
            raise _service_error(self.service, exc, None, what) from None
        if missing_ok and response.status_code == 404:
            return None
        if response.status_code not in (200, 201, 202):
            raise _service_error(self.service, None, response, what)
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise ActuatorError(f"{self.service}_bad_response", f"{what}: the {self.service}'s answer is not an object")
        return data


class HttpProvider(_Http):
    """`POST /provider/scale_out`, `POST /provider/release`, `GET /provider/allocations?idempotency_key=`."""

    service = "provider"

    def scale_out(self, *, gpu_class: str, count: int, max_hourly_usd: float, idempotency_key: str) -> Allocation:
        what = f"scale out {count} x {gpu_class}"
        data = self._call("POST", "/provider/scale_out", what, key=idempotency_key,
                          body={"gpu_class": gpu_class, "count": count, "max_hourly_usd": max_hourly_usd})
        allocation = self._allocation(data, what)
        if allocation.gpu_class != gpu_class or allocation.count != count:
            raise ActuatorError("provider_mismatch", f"{what}: the provider allocated "
                                f"{allocation.count} x {allocation.gpu_class}")
        if allocation.hourly_usd > max_hourly_usd:
            # More than the approved ceiling: give it back at once, and fail.
            self.release(allocation.allocation_id)
            raise ActuatorError("over_budget", f"{what}: the provider asked {allocation.hourly_usd} USD/h, "
                                f"over the approved {max_hourly_usd}")
        return allocation

    def release(self, allocation_id: str) -> Allocation:
        what = "release an allocation"
        return self._allocation(self._call("POST", "/provider/release", what, body={"allocation_id": allocation_id},
                                           key=f"release:{allocation_id}"), what)

    def find(self, idempotency_key: str) -> Allocation | None:
        what = "look up an allocation"
        data = self._call("GET", "/provider/allocations", what, params={"idempotency_key": idempotency_key},
                          missing_ok=True)
        return None if data is None else self._allocation(data, what)

    def _allocation(self, data: dict[str, Any] | None, what: str) -> Allocation:
        try:
            assert data is not None
            return Allocation(
                allocation_id=str(data["allocation_id"]), gpu_class=str(data["gpu_class"]), count=int(data["count"]),
                hourly_usd=float(data["hourly_usd"]), state=str(data["state"]),
                replica_ids=tuple(str(r) for r in data.get("replica_ids") or ()),
            )
        except (AssertionError, KeyError, TypeError, ValueError):
            raise ActuatorError("provider_bad_response", f"{what}: the provider's answer is not an allocation") from None


class HttpWallet(_Http):
    """`POST /wallet/pay`, `GET /wallet/payments?idempotency_key=`."""

    service = "wallet"

    def pay(self, *, payee_ref: str, amount_sats: int, purpose: str, idempotency_key: str) -> Payment:
        what = f"pay {amount_sats} sats to {payee_ref}"
        data = self._call("POST", "/wallet/pay", what, key=idempotency_key,
                          body={"payee_ref": payee_ref, "amount_sats": amount_sats, "purpose": purpose})
        payment = self._payment(data, what)
        if (payment.payee_ref, payment.amount_sats) != (payee_ref, amount_sats):
            raise ActuatorError("wallet_mismatch", f"{what}: the wallet reports {payment.amount_sats} sats "
                                f"to {payment.payee_ref}")
        return payment

    def find(self, idempotency_key: str) -> Payment | None:
        what = "look up a payment"
        data = self._call("GET", "/wallet/payments", what, params={"idempotency_key": idempotency_key},
                          missing_ok=True)
        return None if data is None else self._payment(data, what)

    def _payment(self, data: dict[str, Any] | None, what: str) -> Payment:
        try:
            assert data is not None
            return Payment(payment_id=str(data["payment_id"]), payee_ref=str(data["payee_ref"]),
                           amount_sats=int(data["amount_sats"]), purpose=str(data["purpose"]),
                           state=str(data["state"]))
        except (AssertionError, KeyError, TypeError, ValueError):
            raise ActuatorError("wallet_bad_response", f"{what}: the wallet's answer is not a payment") from None


class Unconfigured:
    """No provider or wallet configured: every call fails, typed (`provider_unconfigured`, `wallet_unconfigured`)."""

    def __init__(self, service: str, variable: str) -> None:
        self.service = service
        self.variable = variable

    def _refuse(self, *_args: object, **_kwargs: object) -> Any:  # noqa: ANN401
        raise ActuatorError(f"{self.service}_unconfigured", f"no {self.service} is configured: set {self.variable}")

    scale_out = release = pay = find = _refuse


def provider_from(url: str | None) -> Provider:
    return HttpProvider(url) if url else Unconfigured("provider", "OVERSEER_PROVIDER_URL")  # type: ignore[return-value]


def wallet_from(url: str | None) -> Wallet:
    return HttpWallet(url) if url else Unconfigured("wallet", "OVERSEER_WALLET_URL")  # type: ignore[return-value]
