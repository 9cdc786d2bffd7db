"""Credentials: a real TLS handshake against the CA, keys read by Flower's own loaders."""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import stat
import subprocess
import threading
from pathlib import Path

import pytest
import tomli
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from fedretrain.deploy.certs import (
    CertificateAuthority,
    Registration,
    RegistrationError,
    _registration,
    make_ca,
    make_server_certificate,
    make_site_keys,
    write_superlink_connection,
)


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("creds")
    ca = make_ca(directory)
    make_server_certificate(directory, ca, ["superlink.example.org", "10.1.2.3"])
    make_site_keys(directory, ["site-0", "site-1"])
    return directory


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_files_are_0600_and_public_ones_0644(creds: Path) -> None:
    for name in ("ca.key", "server.key", "site-0.key", "site-1.key"):
        assert _mode(creds / name) == 0o600, name
    for name in ("ca.crt", "server.pem", "site-0.pub", "site-1.pub"):
        assert _mode(creds / name) == 0o644, name
    assert [p.name for p in creds.iterdir() if p.name.startswith(".")] == [".gitignore"]  # no temp


def test_credentials_made_inside_a_git_work_tree_keep_private_keys_untracked(
    tmp_path: Path,
) -> None:
    """Issue 18, item 9: `fedretrain certs init fed/creds` in a repository left the private
    keys as untracked files that `git add -A` would commit."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    creds = tmp_path / "fed" / "creds"
    ca = make_ca(creds)
    make_server_certificate(creds, ca, ["localhost"])
    make_site_keys(creds, ["site-0"])
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    offered = sorted(line.split()[-1] for line in status.splitlines())
    assert offered == [
        "fed/creds/.gitignore", "fed/creds/ca.crt", "fed/creds/server.pem", "fed/creds/site-0.pub"
    ]  # fmt: skip
    assert (creds / "ca.key").exists() and (creds / "site-0.key").exists()


def test_server_certificate_is_signed_by_the_ca_for_the_hosts_and_loopback(creds: Path) -> None:
    ca = x509.load_pem_x509_certificate((creds / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((creds / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["superlink.example.org", "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == [
        "10.1.2.3",
        "127.0.0.1",
        "::1",
    ]
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def _handshake(creds: Path, cafile: Path, server_hostname: str) -> str:
    """Serve one TLS connection with the server certificate; return the client's version."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(creds / "server.pem", creds / "server.key")
    client_ctx = ssl.create_default_context(cafile=str(cafile))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (ssl.SSLError, OSError):
                pass

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
            ):
                version = tls.version() or ""
                tls.sendall(b"x")
        finally:
            thread.join(timeout=5)
    return version


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "superlink.example.org", "10.1.2.3"])
def test_a_client_trusting_the_ca_completes_a_tls_handshake(creds: Path, host: str) -> None:
    assert _handshake(creds, creds / "ca.crt", host).startswith("TLS")


def test_a_client_trusting_another_ca_or_dialing_another_name_is_refused(
    creds: Path, tmp_path: Path
) -> None:
    other = make_ca(tmp_path)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(creds, other.cert, "localhost")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(creds, creds / "ca.crt", "elsewhere.example.org")


def test_site_keys_load_as_flower_1_41_loads_them(creds: Path) -> None:
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes
    from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

    args = argparse.Namespace(
        auth_supernode_private_key=str(creds / "site-0.key"), auth_supernode_public_key=None
    )
    keys = _try_setup_client_authentication(args)  # what flower-supernode does
    assert keys is not None
    private, public = keys
    assert isinstance(private.curve, ec.SECP384R1)
    # `flwr supernode register site-0.pub` sends exactly the key the SuperNode signs with
    assert try_load_public_key(creds / "site-0.pub") == public_key_to_bytes(public)
    assert try_load_public_key(creds / "site-1.pub") != public_key_to_bytes(public)


def test_public_key_file_is_one_openssh_line_named_after_the_site(creds: Path) -> None:
    line = (creds / "site-1.pub").read_text()
    assert line.startswith("ecdsa-sha2-nistp384 ") and line.endswith(" site-1\n")
    assert line.count("\n") == 1
    key = serialization.load_ssh_public_key(line.encode())
    assert isinstance(key, ec.EllipticCurvePublicKey)


def test_existing_credentials_are_not_overwritten_unless_asked(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    before = ca.key.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        make_ca(tmp_path)
    make_site_keys(tmp_path, ["a"])
    with pytest.raises(FileExistsError):
        make_site_keys(tmp_path, ["b", "a"])
    assert not (tmp_path / "b.key").exists()  # nothing written when one target exists
    assert make_ca(tmp_path, overwrite=True) == ca
    assert ca.key.read_bytes() != before


@pytest.mark.parametrize("sites", [["../x"], [""], [".hidden"], ["a b"], ["a", "a"]])
def test_bad_site_names_are_refused(tmp_path: Path, sites: list[str]) -> None:
    with pytest.raises(ValueError, match="site name"):
        make_site_keys(tmp_path, sites)


def test_server_certificate_refuses_an_empty_host(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    with pytest.raises(ValueError, match="empty host"):
        make_server_certificate(tmp_path, ca, [" "])


def test_connection_is_merged_into_flower_config_and_read_by_flower(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flwr.cli.flower_config import read_superlink_connection

    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'
    )
    ca = CertificateAuthority(cert=tmp_path / "ca.crt", key=tmp_path / "ca.key")
    path = write_superlink_connection(home, "prod", "link.example.org:8000", ca.cert)
    config = tomli.loads(path.read_text())
    assert config["superlink"]["default"] == "local"  # the user's settings are kept
    assert config["superlink"]["local"] == {"address": ":local:"}
    monkeypatch.setenv("FLWR_HOME", str(home))
    connection = read_superlink_connection("prod")
    assert connection.address == "link.example.org:8000"
    assert connection.root_certificates == str(ca.cert.resolve())
    assert not connection.insecure

    write_superlink_connection(home, "prod", "other:9000", ca.cert, default=True)
    assert read_superlink_connection(None).address == "other:9000"


def _completed(stdout: str, returncode: int = 0) -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess(["flwr"], returncode, stdout=stdout, stderr="")


def test_registration_output_is_read_from_the_cli_json() -> None:
    # stdout of `flwr supernode register ... --format json` in flwr 1.41 (exit status 0 both)
    ok = json.dumps({"success": True, "node-id": 17537166253868253354}, indent=2)
    known = json.dumps(
        {
            "success": False,
            "error-message": "Using SuperLink: fed (127.0.0.1:18400)\n\n"
            "[code: 23] Public key already in use.",
        },
        indent=2,
    )
    assert _registration("a", _completed(ok)) == Registration("a", 17537166253868253354, False)
    assert _registration("a", _completed(known)) == Registration("a", None, True)
    refused = json.dumps({"success": False, "error-message": "[code: 5] connection refused"})
    with pytest.raises(RegistrationError, match="connection refused"):
        _registration("a", _completed(refused))
    with pytest.raises(RegistrationError, match="exit 1"):
        _registration("a", _completed("not json", returncode=1))
