"""Operator keys and signatures: Ed25519 through `cryptography`, and the operator registry.

The overseer (and the mind) hold public keys only: the registry is a JSON or TOML file the code
location reads (`OVERSEER_OPERATORS`, default `OVERSEER_HOME/operators.json`):

    {"operators": [{"name": "alice", "public_key": "<base64 of the raw 32-byte Ed25519 key>"}]}

An operator's private key stays on the operator's machine as a PEM file (mode 0600), made by
`overseer operator keygen`, and is read only by the commands that sign (`overseer approve`, ...).
A registry entry that is malformed fails the load, naming the entry; a missing registry file is an
empty registry (no one can approve anything).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from overseer_dagster.core.approval import is_operator_name

REGISTRY_ENV = "OVERSEER_OPERATORS"
REGISTRY_FILE = "operators.json"
PUBLIC_KEY_BYTES = 32


class RegistryError(RuntimeError):
    """The operator registry cannot be used; the message names the file (not its directory) and the entry."""


class KeyFileError(RuntimeError):
    """A private key file cannot be used; the message says why."""


# --- the registry ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OperatorRegistry:
    """Registered operators by name, with their Ed25519 public keys."""

    keys: Mapping[str, Ed25519PublicKey]

    @classmethod
    def empty(cls) -> OperatorRegistry:
        return cls({})

    @classmethod
    def load(cls, path: Path) -> OperatorRegistry:
        """The registry in `path` (JSON, or TOML for a `.toml` name). A missing file is an empty registry."""
        name = path.name
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls.empty()
        except OSError as exc:
            raise RegistryError(f"{name}: cannot be read ({exc.strerror})") from None
        try:
            document = tomllib.loads(raw.decode()) if path.suffix == ".toml" else json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RegistryError(f"{name}: not valid {'TOML' if path.suffix == '.toml' else 'JSON'} ({exc})") from None
        return cls.from_document(document, source=name)

    @classmethod
    def from_document(cls, document: Any, *, source: str = "operators") -> OperatorRegistry:  # noqa: ANN401
        if not isinstance(document, dict) or not isinstance(document.get("operators"), list):
            raise RegistryError(f'{source}: expected an object {{"operators": [{{"name": ..., "public_key": ...}}]}}')
        keys: dict[str, Ed25519PublicKey] = {}
        for i, entry in enumerate(document["operators"]):
            where = f"{source}: operators[{i}]"
            if not isinstance(entry, dict) or set(entry) - {"name", "public_key", "comment"}:
                raise RegistryError(f"{where}: expected an object with exactly `name` and `public_key`")
            name = entry.get("name")
            if not is_operator_name(name):
                raise RegistryError(f"{where}: name must match [a-z][a-z0-9._-]{{0,63}}")
            where = f'{where} ("{name}")'
            if name in keys:
                raise RegistryError(f"{where}: {name} is registered twice")
            try:
                keys[name] = public_key_from_b64(entry.get("public_key"))
            except ValueError as exc:
                raise RegistryError(f"{where}: public_key {exc}") from None
        return cls(keys)

    def __contains__(self, name: object) -> bool:
        return name in self.keys

    def verify(self, operator: str, message: bytes, signature: bytes) -> bool:
        """Whether `operator` is registered and `signature` is theirs over `message`."""
        key = self.keys.get(operator)
        if key is None:
            return False
        try:
            key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


def registry_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    raw = env.get(REGISTRY_ENV, "").strip()
    if raw:
        return Path(raw).expanduser()
    from overseer_dagster.store.db import overseer_home

    return overseer_home() / REGISTRY_FILE


def load_registry(env: Mapping[str, str] | None = None) -> OperatorRegistry:
    return OperatorRegistry.load(registry_path(env))


def registry_entry(name: str, key: Ed25519PrivateKey | Ed25519PublicKey) -> dict[str, str]:
    return {"name": name, "public_key": public_key_b64(key)}


def add_to_registry(path: Path, entry: Mapping[str, str]) -> None:
    """Add (or replace) one operator in the JSON registry at `path`, atomically; checked before it is written."""
    try:
        document = json.loads(path.read_text()) if path.exists() else {"operators": []}
    except ValueError as exc:
        raise RegistryError(f"{path.name}: not valid JSON ({exc})") from None
    if not isinstance(document, dict) or not isinstance(document.get("operators"), list):
        raise RegistryError(f"{path.name}: expected an object with an `operators` list")
    document["operators"] = [e for e in document["operators"]
                             if not (isinstance(e, dict) and e.get("name") == entry["name"])] + [dict(entry)]
    OperatorRegistry.from_document(document, source=path.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    tmp.replace(path)


# --- keys and signatures ---------------------------------------------------------------------------


def public_key_b64(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def public_key_from_b64(text: object) -> Ed25519PublicKey:
    if not isinstance(text, str):
        raise ValueError("is missing or not a string")
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not base64") from None
    if len(raw) != PUBLIC_KEY_BYTES:
        raise ValueError(f"is {len(raw)} bytes, not the {PUBLIC_KEY_BYTES} of a raw Ed25519 public key")
    return Ed25519PublicKey.from_public_bytes(raw)


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def write_private_key(key: Ed25519PrivateKey, path: Path) -> None:
    """PEM (PKCS#8, unencrypted) at `path`, created with mode 0600; an existing file is never overwritten."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, pem)
    finally:
        os.close(fd)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path.name}: cannot be read ({exc.strerror})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{path.name}: readable by others (mode {stat.S_IMODE(mode):o}); chmod 600 it")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path.name}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path.name}: not an Ed25519 key")
    return key


def sign(key: Ed25519PrivateKey, message: bytes) -> str:
    return base64.b64encode(key.sign(message)).decode()
