"""OAuth 2.0 bearer tokens beside the API keys: a JWT from the operator's identity provider, verified against
its JWKS (a file, re-read when it changes, or an https URL, fetched at start and again for an unknown key id
at most once a minute), signed RS256 or ES256 only (never `none`, never an HMAC: a public key used as an HMAC
secret is the classic forgery), with the configured issuer and audience, an expiry, and the configured clock
skew. The role comes from a configured claim (a string or a list: the highest of viewer, developer, admin
wins; a dotted path reaches nested claims such as Keycloak's `realm_access.roles`), the tenant from another.

A token's caller is rate-limited like a key with the default limits (600/min, burst 50, 32 in flight), per
subject (`jwt:<sub>`).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt

from nq_dagster.serve.http.errors import ApiError
from nq_dagster.serve.keys import ROLES, KeyRecord
from nq_dagster.settings import Settings
from nq_dagster.store.names import check_tenant_name

ALGORITHMS = ("RS256", "ES256")
KEY_TYPE = {"RS256": "RSA", "ES256": "EC"}
REFETCH_S = (
    60.0  # an unknown key id refetches a JWKS URL at most this often (random kids cannot flood the IdP)
)
TOKEN_RATE_PER_S, TOKEN_BURST, TOKEN_CONCURRENT = 10.0, 50, 32  # the API keys' defaults


@dataclass
class TokenRecord(KeyRecord):
    """A verified token's caller, in the shape the routes know (a key record, its tenant included)."""


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and not token.startswith("nq_")


def _claim(claims: dict, path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _refuse(message: str) -> ApiError:
    return ApiError(
        401, f"bearer token refused: {message}", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
    )


class TokenVerifier:
    def __init__(
        self,
        jwks: str,
        issuer: str,
        audience: str,
        leeway_s: float = 30.0,
        roles_claim: str = "roles",
        tenant_claim: str = "tenant",
    ):
        self.source, self.issuer, self.audience = jwks, issuer, audience
        self.leeway_s, self.roles_claim, self.tenant_claim = leeway_s, roles_claim, tenant_claim
        self.is_url = jwks.startswith(("https://", "http://"))
        self._keys: dict[str, jwt.PyJWK] = {}
        self._stamp: float | int | None = None  # the file's mtime, or the URL's fetch time
        self._lock = threading.Lock()
        self._refresh(force=True)

    @classmethod
    def from_settings(cls, s: Settings) -> TokenVerifier | None:
        if not s.jwt_jwks:
            return None
        return cls(
            s.jwt_jwks, s.jwt_issuer, s.jwt_audience, s.jwt_leeway_s, s.jwt_roles_claim, s.jwt_tenant_claim
        )

    # -- the key set
    def _refresh(self, force: bool = False) -> None:
        with self._lock:
            if self.is_url:
                if not force and self._stamp is not None and time.monotonic() - self._stamp < REFETCH_S:
                    return
                self._stamp = time.monotonic()
                try:
                    r = httpx.get(self.source, timeout=5.0, follow_redirects=False)
                    r.raise_for_status()
                    text = r.text
                except httpx.HTTPError as exc:
                    if force and not self._keys:
                        raise ValueError(
                            f"NQ_JWT_JWKS={self.source}: cannot fetch the key set: {exc}"
                        ) from None
                    return  # keep the keys we have
            else:
                path = Path(self.source)
                try:
                    mtime = path.stat().st_mtime_ns
                except OSError as exc:
                    raise ValueError(f"NQ_JWT_JWKS={self.source}: {exc.strerror}") from None
                if not force and mtime == self._stamp:
                    return
                self._stamp, text = mtime, path.read_text(encoding="utf-8")
            try:
                keys = jwt.PyJWKSet.from_dict(json.loads(text)).keys
            except (ValueError, jwt.PyJWKSetError) as exc:
                raise ValueError(f"NQ_JWT_JWKS={self.source}: not a JWKS ({exc})") from None
            self._keys = {k.key_id: k for k in keys if k.key_id}

    def _key(self, kid: str | None) -> jwt.PyJWK:
        if not self.is_url:
            self._refresh()
        key = self._keys.get(kid or "")
        if key is None and self.is_url:
            self._refresh()
            key = self._keys.get(kid or "")
        if key is None:
            raise _refuse(f"unknown key id {kid!r} (not in the identity provider's key set)")
        return key

    # -- a token
    def verify(self, token: str) -> TokenRecord:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise _refuse("not a well-formed JWT") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise _refuse(f"algorithm {alg!r} is not accepted (RS256 or ES256)")
        key = self._key(header.get("kid"))
        if key.key_type != KEY_TYPE[alg] or (key.algorithm_name and key.algorithm_name != alg):
            raise _refuse(f"key {header.get('kid')!r} is not a {alg} key")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise _refuse("expired") from None
        except jwt.InvalidAudienceError:
            raise _refuse(f"audience is not {self.audience!r}") from None
        except jwt.InvalidIssuerError:
            raise _refuse(f"issuer is not {self.issuer!r}") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _refuse(f"claim {exc.claim!r} missing") from None
        except jwt.InvalidTokenError as exc:
            raise _refuse(str(exc) or type(exc).__name__) from None
        return self._record(claims)

    def _record(self, claims: dict) -> TokenRecord:
        value = _claim(claims, self.roles_claim)
        named = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else []
        roles = [r for r in named if r in ROLES]
        if not roles:
            raise ApiError(
                403,
                f"the token's claim {self.roles_claim!r} names no role ({', '.join(ROLES)}): ask the "
                "identity provider's administrator for one",
            )
        tenant = _claim(claims, self.tenant_claim)
        if tenant is not None:
            try:
                check_tenant_name(str(tenant))
            except ValueError as exc:
                raise ApiError(403, f"the token's claim {self.tenant_claim!r}: {exc}") from None
        return TokenRecord(
            id=f"jwt:{claims['sub']}",
            role=max(roles, key=ROLES.index),
            hash="",
            rate_per_s=TOKEN_RATE_PER_S,
            burst=TOKEN_BURST,
            max_concurrent=TOKEN_CONCURRENT,
            name=str(claims.get("name") or claims.get("preferred_username") or claims["sub"]),
            created_at=str(claims.get("iat", "")),
            tenant=str(tenant) if tenant is not None else None,
        )
