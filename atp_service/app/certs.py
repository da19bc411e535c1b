"""``python -m atp_service.app.certs DIR`` (``make certs``): a private CA, a server and a client certificate
for local TLS and mutual-TLS testing, made with the ``openssl`` command. Not for production: use your
organisation's CA there.

Writes ca.pem/ca.key, server.pem/server.key (for localhost and 127.0.0.1), client.pem/client.key.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

DAYS = "825"


def _run(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _signed(out: Path, name: str, cn: str, ca: str, extensions: str) -> None:
    key, csr, pem = out / f"{name}.key", out / f"{name}.csr", out / f"{name}.pem"
    _run("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-subj", f"/CN={cn}", "-out", str(csr))
    with tempfile.NamedTemporaryFile("w", suffix=".ext") as ext:
        ext.write(extensions)
        ext.flush()
        _run("x509", "-req", "-in", str(csr), "-CA", str(out / f"{ca}.pem"), "-CAkey", str(out / f"{ca}.key"),
             "-CAcreateserial", "-days", DAYS, "-sha256", "-extfile", ext.name, "-out", str(pem))
    csr.unlink()
    key.chmod(0o600)


def make_certs(out: Path, client_cn: str = "atp-client") -> Path:
    out.mkdir(parents=True, exist_ok=True)
    _run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", DAYS, "-subj", "/CN=atp-local-ca",
         "-keyout", str(out / "ca.key"), "-out", str(out / "ca.pem"))
    (out / "ca.key").chmod(0o600)
    _signed(out, "server", "localhost", "ca",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _signed(out, "client", client_cn, "ca", "extendedKeyUsage=clientAuth\n")
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "var/certs")
    make_certs(target)
    print(f"wrote {target}/ca.pem, server.pem/.key, client.pem/.key")
