"""Access roles for the REST API and the dashboard's control actions: hashed bearer tokens, lock-out.

Three roles, each including the ones before it: ``viewer`` reads, ``operator`` also sends commands,
``admin`` also changes settings at run time. A token is 32 random bytes (URL-safe base64), shown once
when made (``ems tokens add``); only its SHA-256 is stored — in the tokens file, one line per token::

    # name role sha256
    scada-gw operator sha256:7f3c...

or in an environment variable (``EMS_API_TOKENS``) as ``name:role:sha256:<hex>`` entries separated by
commas. A fast hash is enough: the tokens are random, not passwords, so there is nothing to guess from
the hash. A presented token is hashed and compared with every stored hash by ``hmac.compare_digest``
(no early exit, so the time taken says nothing about which hash came close).

Backward compatibility: the dashboard's plain token (``telemetry.dashboard.token_env``, default
``EMS_DASHBOARD_TOKEN``) is an operator token named ``dashboard``.

Repeated failures lock a client address out (:class:`Lockout`): after ``max_failures`` wrong or missing
tokens within ``window_s``, every request from that address is refused for ``lockout_s`` (HTTP 429),
whether or not its token is right.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

TOKENS_ENV = "EMS_API_TOKENS"
"""Environment variable with hashed tokens (``name:role:sha256:<hex>,...``)."""
TOKENS_FILE_ENV = "EMS_API_TOKENS_FILE"
"""Environment variable naming the tokens file when the site file names none."""
DASHBOARD_TOKEN_NAME = "dashboard"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_HASH = re.compile(r"^sha256:([0-9a-f]{64})$")


class Role(IntEnum):
    """Access level; a higher role may do everything a lower one may."""

    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"role {text!r}: one of viewer, operator, admin") from None

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Token:
    """A stored token: its name (the identity in logs and the audit), role and SHA-256 digest."""

    name: str
    role: Role
    digest: bytes


class TokenError(ValueError):
    """A tokens file or variable that cannot be read as tokens (the message names where and what)."""


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe base64, 43 characters)."""
    return secrets.token_urlsafe(32)


def digest(token: str) -> bytes:
    """SHA-256 of a presented token's UTF-8 bytes."""
    return hashlib.sha256(token.encode("utf-8", errors="surrogatepass")).digest()


def format_entry(name: str, role: Role, token: str) -> str:
    """The tokens-file line for ``token`` (its hash, never the token)."""
    return f"{name} {role.label} sha256:{digest(token).hex()}"


def _parse(name: str, role: str, hashed: str, where: str) -> Token:
    if not NAME_PATTERN.match(name):
        raise TokenError(f"{where}: name {name[:70]!r}: 1-64 of A-Z a-z 0-9 _ . @ -")
    try:
        level = Role.parse(role)
    except ValueError as exc:
        raise TokenError(f"{where}: {exc}") from None
    match = _HASH.match(hashed)
    if match is None:
        raise TokenError(f"{where}: hash must be sha256:<64 lowercase hex digits> (make entries with "
                         f"`ems tokens add`)")
    return Token(name, level, bytes.fromhex(match.group(1)))


def read_file(path: Path) -> list[Token]:
    """Tokens of a tokens file (``name role sha256:<hex>`` per line, ``#`` comments); raises ``TokenError``."""
    try:
        lines = path.read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenError(f"{path}: {exc}") from None
    tokens = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.split()
        if len(parts) != 3:
            raise TokenError(f"{path}:{number}: expected 'name role sha256:<hex>'")
        tokens.append(_parse(*parts, where=f"{path}:{number}"))
    return tokens


def read_env(value: str, variable: str = TOKENS_ENV) -> list[Token]:
    """Tokens of ``name:role:sha256:<hex>`` entries separated by commas; raises ``TokenError``."""
    tokens = []
    for i, entry in enumerate(e.strip() for e in value.split(",")):
        if not entry:
            continue
        name, _, rest = entry.partition(":")
        role, _, hashed = rest.partition(":")
        tokens.append(_parse(name, role, hashed, where=f"${variable} entry {i + 1}"))
    return tokens


TOKENS_FILE_HEADER = "# name role sha256 — made by `ems tokens add`; only hashes, never tokens"


def write_entry(path: Path, name: str, role: Role, token: str) -> None:
    """Add (or replace) ``name`` in the tokens file, creating it readable by its owner only.

    The other lines, comments included, are kept as they are; a file with a bad line is refused
    (``TokenError``) rather than rewritten.
    """
    if not NAME_PATTERN.match(name):
        raise TokenError(f"name {name[:70]!r}: 1-64 of A-Z a-z 0-9 _ . @ -")
    lines = _lines_without(path, name) if path.exists() else [TOKENS_FILE_HEADER]
    _replace_file(path, [*lines, format_entry(name, role, token)])


def remove_entry(path: Path, name: str) -> bool:
    """Drop ``name`` from the tokens file (other lines and comments kept); False if it was not there."""
    before = path.read_text("utf-8").splitlines() if path.exists() else []
    lines = _lines_without(path, name)
    if len(lines) == len(before):
        return False
    _replace_file(path, lines)
    return True


def _lines_without(path: Path, name: str) -> list[str]:
    """The tokens file's lines except the entries of ``name``; ``TokenError`` if any line is not an entry."""
    read_file(path)  # every line checked before anything is rewritten
    lines = path.read_text("utf-8").splitlines()
    return [line for line in lines if line.split("#", 1)[0].split()[:1] != [name]]


def _replace_file(path: Path, lines: list[str]) -> None:
    """Write ``lines`` to ``path`` all at once (a temporary file renamed over it), readable by its owner only:
    a crash or a full disk leaves the old file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write("\n".join(lines) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


class TokenStore:
    """The tokens a request may present.

    Parameters
    ----------
    tokens : iterable of Token
        Hashed tokens (file and environment).
    dashboard_token : str, optional
        The dashboard's plain token (``EMS_DASHBOARD_TOKEN``), kept only as its hash, role operator.
    """

    def __init__(self, tokens: Iterable[Token] = (), dashboard_token: str | None = None):
        self.tokens = list(tokens)
        if dashboard_token:
            self.tokens.append(Token(DASHBOARD_TOKEN_NAME, Role.OPERATOR, digest(dashboard_token)))

    def __bool__(self) -> bool:
        return bool(self.tokens)

    def lookup(self, presented: str) -> Token | None:
        """The stored token matching ``presented``; every hash is compared in constant time."""
        given = digest(presented)
        found = None
        for token in self.tokens:
            if hmac.compare_digest(given, token.digest) and found is None:
                found = token
        return found


class Lockout:
    """Failures per client address, and the addresses locked out for them.

    Parameters
    ----------
    max_failures : int
        Failures within ``window_s`` that lock the address out.
    window_s, lockout_s : float
        Counting window and lock-out time. [s, real time]
    max_clients : int
        Addresses tracked at most (the oldest entries are forgotten beyond it, bounding memory).
    """

    def __init__(self, max_failures: int = 5, window_s: float = 60.0, lockout_s: float = 60.0,
                 max_clients: int = 4096, now: Callable[[], float] = time.monotonic):
        self.max_failures = max_failures
        self.window_s = window_s
        self.lockout_s = lockout_s
        self.max_clients = max_clients
        self._now = now
        self._failures: dict[str, list[float]] = {}
        self._locked: dict[str, float] = {}

    def retry_after(self, client: str) -> float | None:
        """Seconds until ``client`` may try again, or ``None`` when it is not locked out."""
        until = self._locked.get(client)
        if until is None:
            return None
        left = until - self._now()
        if left <= 0:
            del self._locked[client]
            return None
        return left

    def failed(self, client: str) -> None:
        """Count one failure of ``client``; locks it out at ``max_failures`` within the window."""
        now = self._now()
        recent = [t for t in self._failures.pop(client, []) if now - t < self.window_s] + [now]
        if len(recent) >= self.max_failures:
            self._locked[client] = now + self.lockout_s
            recent = []
        else:
            self._failures[client] = recent
        while len(self._failures) > self.max_clients:
            del self._failures[next(iter(self._failures))]
        while len(self._locked) > self.max_clients:
            del self._locked[next(iter(self._locked))]

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)


def load_store(file: Path | None, env_value: str | None, dashboard_token: str | None) -> TokenStore:
    """Tokens from the tokens file (if given and present), ``$EMS_API_TOKENS`` and the dashboard token;
    raises ``TokenError`` naming the bad entry."""
    tokens: list[Token] = []
    if file is not None and file.exists():
        tokens += read_file(file)
    if env_value:
        tokens += read_env(env_value)
    return TokenStore(tokens, dashboard_token)
