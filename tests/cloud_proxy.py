"""A loopback stand-in for the clouds' front doors, in front of a real Orthanc's DICOMweb.

It checks credentials the way the cloud does, then forwards accepted requests to Orthanc and
returns Orthanc's answer unchanged:

- google: a token endpoint (POST /token, the key file's token_uri) that verifies the
  service-account JWT assertion (RS256 with the public key of the key pair the test made,
  aud == Google's token endpoint, iss == the service account, scope, iat/exp sane, lifetime at
  most 1 h) and issues
  opaque access tokens that expire after `token_lifetime_s`; other requests need
  ``Authorization: Bearer <a live token>`` or get 401.
- aws-sigv4: the signature is recomputed with botocore from the known secret over the signed
  headers named in the Authorization header; a mismatch, an unknown key id, a wrong
  region/service scope, an X-Amz-Date more than 5 minutes away or a body whose SHA-256 is not
  X-Amz-Content-SHA256 gets 403.

Every decision is recorded in `log` (what was refused and why) so tests can assert on it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_AUDIENCE = "https://oauth2.googleapis.com/token"
SKEW_S = 300  # accepted clock difference (iat in the future, X-Amz-Date either way)


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class ServiceAccount:
    """A key pair made for the test and the JSON key file a Google console would give."""

    email: str
    private_pem: str
    public_key: RSAPublicKey

    @classmethod
    def generate(cls, email: str = "edge@test-project.iam.gserviceaccount.com") -> ServiceAccount:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")
        return cls(email, pem, key.public_key())

    def key_file(self, path: Path, token_uri: str, private_pem: str | None = None) -> Path:
        path.write_text(
            json.dumps(
                {
                    "type": "service_account",
                    "project_id": "test-project",
                    "private_key_id": "test-key-1",
                    "private_key": private_pem or self.private_pem,
                    "client_email": self.email,
                    "client_id": "1",
                    "token_uri": token_uri,
                }
            )
        )
        path.chmod(0o600)
        return path


@dataclass
class AwsKey:
    key_id: str = "AKIAEDGETEST00000001"
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(30))
    region: str = "us-east-1"
    service: str = "medical-imaging"

    def credentials_file(self, path: Path, secret: str | None = None) -> Path:
        path.write_text(
            "[edge]\n"
            f"aws_access_key_id = {self.key_id}\n"
            f"aws_secret_access_key = {secret or self.secret}\n"
        )
        path.chmod(0o600)
        return path


@dataclass
class CloudProxy:
    upstream: str  # Orthanc's HTTP root, e.g. http://127.0.0.1:8042
    mode: str  # "google" or "aws-sigv4"
    account: ServiceAccount | None = None
    aws: AwsKey | None = None
    token_lifetime_s: int = 3600
    port: int = 0
    tokens: dict[str, float] = field(default_factory=dict)  # access token -> expiry (epoch)
    log: list[str] = field(default_factory=list)  # "accepted ..." / "refused: why"
    issued: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    def revoke_all(self) -> None:
        self.tokens.clear()

    def refusals(self) -> list[str]:
        return [line for line in self.log if line.startswith("refused")]

    # ------------------------------------------------------------------ google

    def issue_token(self, form: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        if form.get("grant_type") != [JWT_GRANT]:
            return self._bad_grant("unsupported grant_type")
        assertion = (form.get("assertion") or [""])[0]
        problem = self.verify_assertion(assertion)
        if problem:
            return self._bad_grant(problem)
        token = secrets.token_urlsafe(24)
        self.tokens[token] = time.time() + self.token_lifetime_s
        self.issued += 1
        self.log.append("accepted token request")
        body = {"access_token": token, "expires_in": self.token_lifetime_s, "token_type": "Bearer"}
        return 200, body

    def _bad_grant(self, why: str) -> tuple[int, dict[str, Any]]:
        self.log.append(f"refused token request: {why}")
        return 400, {"error": "invalid_grant", "error_description": why}

    def verify_assertion(self, assertion: str) -> str:
        """'' when the JWT is good, else why not."""
        assert self.account is not None
        try:
            head_b64, claims_b64, sig_b64 = assertion.split(".")
            header = json.loads(b64url_decode(head_b64))
            claims = json.loads(b64url_decode(claims_b64))
            signature = b64url_decode(sig_b64)
        except ValueError:
            return "malformed JWT"
        if header.get("alg") != "RS256":
            return f"alg {header.get('alg')!r} is not RS256"
        try:
            self.account.public_key.verify(
                signature,
                f"{head_b64}.{claims_b64}".encode("ascii"),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except Exception:
            return "Invalid JWT Signature."
        now = time.time()
        # google-auth always names Google's endpoint as the audience, whatever token_uri is
        # (and Google checks exactly that); the POST itself goes to token_uri.
        if claims.get("aud") != GOOGLE_AUDIENCE:
            return f"aud {claims.get('aud')!r} is not {GOOGLE_AUDIENCE}"
        if claims.get("iss") != self.account.email:
            return "iss is not the service account"
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int) or not isinstance(exp, int):
            return "iat/exp missing"
        if iat > now + SKEW_S or exp <= now or exp - iat > 3600:
            return "Invalid JWT: Token must be a short-lived token (60 minutes) and in a"
        if "cloud-healthcare" not in str(claims.get("scope", "")):
            return f"scope {claims.get('scope')!r} lacks cloud-healthcare"
        return ""

    def check_bearer(self, headers: Any) -> str:
        value = str(headers.get("Authorization", ""))
        if not value.startswith("Bearer "):
            return "no bearer token"
        expiry = self.tokens.get(value[len("Bearer ") :])
        if expiry is None:
            return "unknown token"
        if time.time() >= expiry:
            return "expired token"
        return ""

    # ------------------------------------------------------------------ aws

    def check_sigv4(self, method: str, path: str, headers: Any, body: bytes) -> str:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        assert self.aws is not None
        match = re.fullmatch(
            r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request,"
            r" SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})",
            str(headers.get("Authorization", "")),
        )
        if match is None:
            return "no SigV4 Authorization header"
        key_id, day, region, service, signed, signature = match.groups()
        if key_id != self.aws.key_id:
            return "unknown access key id"
        if (region, service) != (self.aws.region, self.aws.service):
            return f"scope {region}/{service} is not {self.aws.region}/{self.aws.service}"
        stamp = str(headers.get("X-Amz-Date", ""))
        try:
            when = dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
        except ValueError:
            return "no X-Amz-Date"
        if abs(when.timestamp() - time.time()) > SKEW_S or stamp[:8] != day:
            return "Signature expired (X-Amz-Date too far from now)"
        names = signed.split(";")
        if "host" not in names or "x-amz-content-sha256" not in names:
            return "host and x-amz-content-sha256 must be signed"
        claimed = str(headers.get("X-Amz-Content-SHA256", ""))
        if claimed != hashlib.sha256(body).hexdigest():
            return "XAmzContentSHA256Mismatch"
        request = AWSRequest(
            method=method,
            url=f"http://{headers.get('Host')}{path}",
            headers={name: str(headers.get(name, "")) for name in names},
            data=b"",
        )
        request.context["timestamp"] = stamp
        signer = SigV4Auth(Credentials(self.aws.key_id, self.aws.secret), service, region)
        expected = signer.signature(
            signer.string_to_sign(request, signer.canonical_request(request)), request
        )
        if not hmac.compare_digest(expected, signature):
            return "SignatureDoesNotMatch"
        return ""


def _handler(proxy: CloudProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
            pass

        def _reply(self, code: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length", "0")))

        def do_POST(self) -> None:
            body = self._body()
            if self.path == "/token" and proxy.mode == "google":
                code, payload = proxy.issue_token(parse_qs(body.decode("ascii")))
                self._reply(code, json.dumps(payload).encode())
                return
            if proxy.mode == "google":
                why, refusal = proxy.check_bearer(self.headers), 401
            else:
                why, refusal = proxy.check_sigv4("POST", self.path, self.headers, body), 403
            if why:
                proxy.log.append(f"refused {self.path}: {why}")
                self._reply(refusal, json.dumps({"message": why}).encode())
                return
            proxy.log.append(f"accepted {self.path}")
            forwarded = {
                k: self.headers[k] for k in ("Content-Type", "Accept") if k in self.headers
            }
            response = httpx.post(
                proxy.upstream + self.path, content=body, headers=forwarded, timeout=60
            )
            self._reply(
                response.status_code,
                response.content,
                response.headers.get("Content-Type", "application/json"),
            )

    return Handler


@contextmanager
def cloud_proxy(proxy: CloudProxy) -> Iterator[CloudProxy]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(proxy))
    proxy.port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
