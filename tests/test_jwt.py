"""OAuth 2.0 bearer JWTs beside the API keys (issue 27): tokens of the test's own identity provider (an
RSA and an EC key in a JWKS file, and the same set over HTTP) are accepted with the configured issuer,
audience and clock skew, the role and the tenant from their claims; expired, foreign-audience,
foreign-issuer, unknown-key, `alg: none` and HS256-signed-with-the-public-key tokens are refused with 401
naming why."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import threading
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.testclient import TestClient

from nq_dagster.serve.http.app import create_server
from nq_dagster.serve.http.tokens import TokenVerifier
from nq_dagster.serve.keys import KeyStore
from nq_dagster.settings import Settings, SettingsError

ISS, AUD = "https://idp.example/realms/nq", "nq-serve"


@pytest.fixture(scope="module")
def idp():
    """The identity provider: its private keys and its public JWKS."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwks = {"keys": []}
    for kid, key, alg in (("rsa-1", rsa_key, "RS256"), ("ec-1", ec_key, "ES256")):
        algo = jwt.algorithms.RSAAlgorithm if alg == "RS256" else jwt.algorithms.ECAlgorithm
        jwk = json.loads(algo.to_jwk(key.public_key()))
        jwks["keys"].append({**jwk, "kid": kid, "alg": alg, "use": "sig"})
    return {"rsa-1": rsa_key, "ec-1": ec_key, "jwks": jwks}


def token(idp, kid="rsa-1", alg="RS256", **claims) -> str:
    now = int(time.time())
    body = {"iss": ISS, "aud": AUD, "sub": "alice", "iat": now, "exp": now + 300, "roles": ["developer"]}
    body.update(claims)
    return jwt.encode(
        {k: v for k, v in body.items() if v is not None}, idp[kid], algorithm=alg, headers={"kid": kid}
    )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict, claims: dict, secret: bytes | None) -> str:
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    sig = b64(hmac.new(secret, head.encode(), hashlib.sha256).digest()) if secret else ""
    return head + "." + sig


@pytest.fixture
def client(idp, tmp_path):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(idp["jwks"]))
    s = Settings(home=tmp_path / "nq", jwt_jwks=str(path), jwt_issuer=ISS, jwt_audience=AUD, jwt_leeway_s=30)
    srv = create_server(s)
    with TestClient(srv.app) as c:
        yield c, srv


def call(c, tok: str, path="/api/v1/ping"):
    return c.get(path, headers={"Authorization": f"Bearer {tok}"})


def test_valid_tokens_are_accepted_with_role_and_tenant_from_claims(client, idp):
    c, srv = client
    assert call(c, token(idp)).status_code == 200
    assert call(c, token(idp, "ec-1", "ES256", roles="admin"), "/api/v1/keys").status_code == 200
    assert call(c, token(idp, roles=["viewer"]), "/api/v1/keys").status_code == 403
    r = c.post(
        "/api/v1/process/batch",
        json={"data_points": []},
        headers={"Authorization": f"Bearer {token(idp, roles='viewer')}"},
    )
    assert r.status_code == 403 and "needs 'developer'" in r.json()["error"]["message"]
    # within the clock skew (expired 10 s ago, 30 s allowed)
    assert call(c, token(idp, exp=int(time.time()) - 10)).status_code == 200
    rec = srv.state.access.authenticate(
        {"authorization": f"Bearer {token(idp, tenant='acme')}"}, "viewer", {}
    )
    assert rec.id == "jwt:alice" and rec.role == "developer" and rec.tenant == "acme"
    r = call(c, token(idp, roles=["auditor"]))
    assert r.status_code == 403 and "'roles' names no role" in r.json()["error"]["message"]
    # API keys keep working beside the tokens
    key = KeyStore(srv.state.wh.home).create("viewer", "600/min", 50, 8, "k")[0]
    assert call(c, key).status_code == 200


@pytest.mark.parametrize(
    "case, why",
    [
        ("expired", "expired"),
        ("audience", "audience is not 'nq-serve'"),
        ("issuer", "issuer is not"),
        ("kid", "unknown key id 'rsa-9'"),
        ("none", "algorithm 'none' is not accepted"),
        ("hs256", "algorithm 'HS256' is not accepted"),
        ("no-exp", "claim 'exp' missing"),
        ("wrong-key-type", "not a ES256 key"),
        ("tampered", "Signature verification failed"),
    ],
)
def test_bad_tokens_are_refused_naming_why(client, idp, case, why):
    c, _ = client
    now = int(time.time())
    claims = {"iss": ISS, "aud": AUD, "sub": "mallory", "exp": now + 300, "roles": ["admin"]}
    pem = (
        idp["rsa-1"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    tok = {
        "expired": lambda: token(idp, exp=now - 120),
        "audience": lambda: token(idp, aud="another-api"),
        "issuer": lambda: token(idp, iss="https://evil.example"),
        "kid": lambda: jwt.encode(claims, idp["rsa-1"], algorithm="RS256", headers={"kid": "rsa-9"}),
        "none": lambda: forged({"alg": "none", "typ": "JWT", "kid": "rsa-1"}, claims, None),
        "hs256": lambda: forged({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, claims, pem),
        "no-exp": lambda: token(idp, exp=None),
        # an ES256 header naming the RSA key: the header's algorithm must be the key's
        "wrong-key-type": lambda: forged({"alg": "ES256", "typ": "JWT", "kid": "rsa-1"}, claims, b"x"),
        "tampered": lambda: _tamper(token(idp)),
    }[case]()
    r = call(c, tok, "/api/v1/keys")
    assert r.status_code == 401, r.text
    assert why in r.json()["error"]["message"] and r.headers["www-authenticate"].startswith("Bearer")


def _tamper(tok: str) -> str:
    head, body, sig = tok.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["roles"] = ["admin"]
    return ".".join([head, b64(json.dumps(claims).encode()), sig])


def test_jwks_over_https_url_and_settings_errors(idp, tmp_path):
    body = json.dumps(idp["jwks"]).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server name
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        v = TokenVerifier(f"http://127.0.0.1:{httpd.server_port}/jwks", ISS, AUD)
        assert v.verify(token(idp, "ec-1", "ES256")).role == "developer"
    finally:
        httpd.shutdown()
    with pytest.raises(SettingsError, match="NQ_JWT_ISSUER and NQ_JWT_AUDIENCE are required"):
        Settings.from_env({"NQ_JWT_JWKS": str(tmp_path / "jwks.json")})
    with pytest.raises(ValueError, match="NQ_JWT_JWKS=.*No such file"):
        TokenVerifier(str(tmp_path / "missing.json"), ISS, AUD)
