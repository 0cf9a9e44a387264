"""Throw-away TLS material and SCRAM users for the local launcher's SASL_SSL listener (tests only).

:func:`make_tls_material` uses the JDK's ``keytool`` (always there when Java runs the broker) to make, in a
folder of the cluster's workdir:

- a self-signed CA (``ca.p12``) and its certificate as PEM (``ca.pem``) for clients' ``ssl.ca.location``;
- a broker keystore (``broker.p12``, PKCS12) whose key is signed by that CA, with subject alternative names
  ``IP:127.0.0.1`` and ``DNS:localhost`` so librdkafka's default hostname verification passes.

Nothing here is meant for production: keys are 2048-bit RSA valid for a few days, the store password is
random per cluster and lives in the broker's properties file.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from streamguard.errors import KafkaUnavailable

SCRAM_MECHANISM = "SCRAM-SHA-512"
SCRAM_LOGIN_MODULE = "org.apache.kafka.common.security.scram.ScramLoginModule"


@dataclass(frozen=True)
class TlsMaterial:
    """Where the generated files are."""

    folder: Path
    ca_pem: Path
    keystore: Path
    keystore_password: str
    keystore_type: str = "PKCS12"


def keytool_executable(java: str | None = None) -> str:
    """``keytool`` next to ``java`` (same JDK) if there, else the one on PATH, else a clear error."""
    if java:
        sibling = Path(java).resolve().parent / "keytool"
        if sibling.exists():
            return str(sibling)
    found = shutil.which("keytool")
    if not found:
        raise KafkaUnavailable("`keytool` (part of the JDK/JRE) was not found; it makes the SASL_SSL listener's "
                               "certificates")
    return found


def _run(cmd: list[str], what: str, hide: Iterable[str] = ()) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    if proc.returncode != 0:
        text = f"{proc.stdout}{proc.stderr}"
        for secret in hide:
            text = text.replace(secret, "***")
        raise KafkaUnavailable(f"{what} failed (keytool exit {proc.returncode}): {text.strip()}")


def make_tls_material(folder: Path, *, java: str | None = None, hosts: Iterable[str] = ("127.0.0.1", "localhost"),
                      validity_days: int = 7) -> TlsMaterial:
    """Generate a CA and a CA-signed broker keystore into ``folder`` (created); see the module docstring."""
    keytool = keytool_executable(java)
    folder.mkdir(parents=True, exist_ok=True)
    password = secrets.token_hex(16)
    ca_store, ca_pem = folder / "ca.p12", folder / "ca.pem"
    broker_store, csr, signed = folder / "broker.p12", folder / "broker.csr", folder / "broker-signed.pem"
    for f in (ca_store, ca_pem, broker_store, csr, signed):
        f.unlink(missing_ok=True)
    san = ",".join(f"ip:{h}" if h.replace(".", "").isdigit() or ":" in h else f"dns:{h}" for h in hosts)
    common = ["-storetype", "PKCS12", "-storepass", password, "-keypass", password]
    validity = ["-validity", str(validity_days)]
    hide = [password]
    _run([keytool, "-genkeypair", "-alias", "ca", "-keyalg", "RSA", "-keysize", "2048", "-dname",
          "CN=streamguard test CA", "-ext", "bc:c", *validity, "-keystore", str(ca_store), *common],
         "creating the test CA", hide)
    _run([keytool, "-exportcert", "-rfc", "-alias", "ca", "-keystore", str(ca_store), "-storepass", password,
          "-file", str(ca_pem)], "exporting the CA certificate", hide)
    _run([keytool, "-genkeypair", "-alias", "broker", "-keyalg", "RSA", "-keysize", "2048", "-dname",
          "CN=localhost", *validity, "-keystore", str(broker_store), *common], "creating the broker key", hide)
    _run([keytool, "-certreq", "-alias", "broker", "-keystore", str(broker_store), "-storepass", password,
          "-file", str(csr)], "making the broker's certificate request", hide)
    _run([keytool, "-gencert", "-alias", "ca", "-keystore", str(ca_store), "-storepass", password, "-infile",
          str(csr), "-outfile", str(signed), "-rfc", "-ext", f"SAN={san}", "-ext", "ku:c=digitalSignature,"
          "keyEncipherment", "-ext", "eku=serverAuth", *validity], "signing the broker certificate", hide)
    _run([keytool, "-importcert", "-noprompt", "-alias", "ca", "-file", str(ca_pem), "-keystore", str(broker_store),
          "-storepass", password, "-storetype", "PKCS12"], "importing the CA into the broker keystore", hide)
    _run([keytool, "-importcert", "-noprompt", "-alias", "broker", "-file", str(signed), "-keystore",
          str(broker_store), "-storepass", password, "-storetype", "PKCS12"],
         "importing the signed broker certificate", hide)
    return TlsMaterial(folder, ca_pem, broker_store, password)


def scram_format_args(users: Mapping[str, str], mechanism: str = SCRAM_MECHANISM) -> list[str]:
    """``kafka.tools.StorageTool format`` arguments that create ``users`` (name -> password) at format time."""
    args: list[str] = []
    for name, password in users.items():
        for part in (name, password):
            if not part or any(c in part for c in ',=[]"\' '):
                raise ValueError("SCRAM user names and passwords for the launcher must be non-empty and free of "
                                 ", = [ ] quotes and spaces")
        args += ["--add-scram", f"{mechanism}=[name={name},password={password}]"]
    return args


def broker_listener_properties(listener: str, tls: TlsMaterial, mechanism: str = SCRAM_MECHANISM) -> dict[str, str]:
    """Broker properties for a SASL_SSL ``listener`` (its name, e.g. ``SECURE``) with SCRAM and ``tls``."""
    prefix = f"listener.name.{listener.lower()}."
    return {
        f"{prefix}sasl.enabled.mechanisms": mechanism,
        f"{prefix}{mechanism.lower()}.sasl.jaas.config": f"{SCRAM_LOGIN_MODULE} required;",
        f"{prefix}ssl.keystore.type": tls.keystore_type,
        f"{prefix}ssl.keystore.location": str(tls.keystore),
        f"{prefix}ssl.keystore.password": tls.keystore_password,
        f"{prefix}ssl.key.password": tls.keystore_password,
        f"{prefix}ssl.client.auth": "none",
    }


def client_settings(ca_pem: Path, user: str, password: str, mechanism: str = SCRAM_MECHANISM) -> dict[str, str]:
    """librdkafka settings for a SASL_SSL client of such a listener."""
    return {
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": mechanism,
        "sasl.username": user,
        "sasl.password": password,
        "ssl.ca.location": str(ca_pem),
    }
