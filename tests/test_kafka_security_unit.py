"""Units of the Kafka security work, no broker: the test gateway's SCRAM server against RFC 7677,
the classification of connection errors into settings, the secret scan of the broker tests."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

import pytest
from aiokafka.errors import IllegalSaslStateError, SaslAuthenticationFailed, UnsupportedSaslMechanismError

from fixtures_security import leaked_secrets
from secure_broker import ScramCredential, ScramError, ScramServer, ScramUsers
from taskclf_daemon.config import load_settings
from taskclf_daemon.kafka_io import classify_connect_error

# RFC 7677 section 3: SCRAM-SHA-256, user "user", password "pencil"
RFC_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_SERVER_FIRST = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
RFC_CLIENT_FINAL = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


class FixedUsers(ScramUsers):
    def __init__(self) -> None:
        super().__init__()
        self._creds[("user", "SCRAM-SHA-256")] = ScramCredential.make("SCRAM-SHA-256", "pencil", base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="), 4096)


def test_scram_server_matches_rfc7677() -> None:
    srv = ScramServer("SCRAM-SHA-256", FixedUsers(), nonce=RFC_SERVER_NONCE)
    assert srv.first(RFC_CLIENT_FIRST) == RFC_SERVER_FIRST
    assert srv.final(RFC_CLIENT_FINAL) == RFC_SERVER_FINAL
    assert srv.user == "user"


def test_scram_server_refuses_a_wrong_proof_an_unknown_user_and_another_mechanism() -> None:
    srv = ScramServer("SCRAM-SHA-256", FixedUsers(), nonce=RFC_SERVER_NONCE)
    srv.first(RFC_CLIENT_FIRST)
    with pytest.raises(ScramError, match="invalid proof"):
        srv.final(RFC_CLIENT_FINAL.replace(b"p=dHzb", b"p=dHzc"))
    with pytest.raises(ScramError, match="unknown user"):
        ScramServer("SCRAM-SHA-256", FixedUsers()).first(b"n,,n=nobody,r=abc")
    with pytest.raises(ScramError, match="unknown user"):
        ScramServer("SCRAM-SHA-512", FixedUsers()).first(RFC_CLIENT_FIRST)  # stored per mechanism
    with pytest.raises(ScramError, match="nonce"):
        s2 = ScramServer("SCRAM-SHA-256", FixedUsers(), nonce=RFC_SERVER_NONCE)
        s2.first(RFC_CLIENT_FIRST)
        s2.final(RFC_CLIENT_FINAL.replace(b"r=rOpr", b"r=xOpr"))


def settings(tmp_path: Path, **env: str) -> object:
    return load_settings(None, env={"TASKCLF_" + k.upper(): v for k, v in env.items()}, require_model=False)


def cert_error(message: str) -> ssl.SSLCertVerificationError:
    e = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message}")
    e.verify_message = message
    return e


CASES = [
    # (settings, exception, key named, words in the message)
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256", "sasl_username": "u"}, SaslAuthenticationFailed("bad"), "sasl_password", ["sasl_username 'u'", "SCRAM-SHA-256"]),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "u"}, KeyError("v"), "sasl_password", ["without the server's proof"]),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN"}, UnsupportedSaslMechanismError("PLAIN not enabled"), "sasl_mechanism", ["PLAIN"]),
    ({"security_protocol": "SASL_PLAINTEXT"}, IllegalSaslStateError("x"), "security_protocol", ["SASL handshake"]),
    ({"security_protocol": "SSL", "ssl_cafile": "/ca.pem"}, cert_error("unable to get local issuer certificate"), "ssl_cafile", ["/ca.pem"]),
    ({"security_protocol": "SSL"}, cert_error("self-signed certificate in certificate chain"), "ssl_cafile", ["system CA store"]),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256"}, cert_error("Hostname mismatch, certificate is not valid for 'kafka'."), "bootstrap_servers", ["subjectAltName"]),
    ({"security_protocol": "SSL"}, ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), "security_protocol", ["not answer with TLS"]),
    ({"security_protocol": "SSL"}, ssl.SSLError(1, "[SSL: SSLV3_ALERT_HANDSHAKE_FAILURE] sslv3 alert handshake failure"), "ssl_certfile", ["client certificates"]),
]


@pytest.mark.parametrize(("env", "exc", "key", "words"), CASES, ids=[f"{c[2]}-{type(c[1]).__name__}" for c in CASES])
def test_connect_errors_name_the_setting(tmp_path: Path, env: dict[str, str], exc: BaseException, key: str, words: list[str]) -> None:
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLCertVerificationError):
        exc.reason = str(exc.args[1]).split("]")[0].split(": ")[-1]  # as _ssl sets it
    err = classify_connect_error(settings(tmp_path, **env), "kafka", 9093, exc)
    assert err is not None and err.key == key, err
    assert "kafka:9093" in err.problem and err.fix
    for w in words:
        assert w in str(err)


@pytest.mark.parametrize("exc", [ConnectionRefusedError(111, "refused"), TimeoutError(), OSError(113, "no route")])
def test_unreachable_broker_is_not_a_settings_error(tmp_path: Path, exc: BaseException) -> None:
    s = settings(tmp_path, security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="u")
    assert classify_connect_error(s, "kafka", 9093, exc) is None


def test_secret_scan_finds_a_planted_secret(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "pw").write_text("tst-planted")
    (tmp_path / "a.log").write_text('{"event": "x", "password": "tst-planted"}\n')
    (tmp_path / "b.log").write_text("clean\n")
    assert leaked_secrets(tmp_path, ["tst-planted", "tst-other"], skip=tmp_path / "secrets") == {str(tmp_path / "a.log"): ["tst-planted"]}
