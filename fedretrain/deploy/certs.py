"""Credentials for a Flower 1.41 deployment: a CA, the SuperLink's TLS certificate, one
authentication key pair per site, and the registration of the sites' public keys.

What Flower 1.41 reads (checked in ``flwr/superlink/cli/flower_superlink.py``,
``flwr/supernode/cli/flower_supernode.py`` and ``flwr/cli/supernode/register.py``):

- ``flower-superlink --ssl-ca-certfile ca.crt --ssl-certfile server.pem --ssl-keyfile server.key``:
  PEM files. One certificate serves the Fleet, Control and Runtime HTTP APIs (one port), so its
  subject alternative names must cover the address the sites dial *and* the loopback address
  the SuperLink's own ServerApp process dials (``localhost``/``127.0.0.1`` are always added).
- ``flower-supernode --root-certificates ca.crt --auth-supernode-private-key site.key``: the
  private key in OpenSSH format, unencrypted, on a NIST curve (we use P-384 as Flower does).
- ``flwr supernode register site.pub <connection>``: the public key in OpenSSH format
  (``ecdsa-sha2-nistp384 AAAA...``), sent through the Control API of a SuperLink started with
  ``--enable-supernode-auth``. There is no key-list file any more: ``--auth-list-public-keys``
  makes 1.41 exit.
- ``$FLWR_HOME/config.toml`` (default ``~/.flwr``) names SuperLink connections for the ``flwr``
  CLI: ``[superlink.<name>]`` with ``address`` and an absolute ``root-certificates`` path.

Private keys are written with mode 0600, certificates and public keys with 0644, each file
atomically. Nothing here imports Flower: registration runs the ``flwr`` CLI.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli
import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedretrain.atomic import atomic_replace

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
# Flower's own choice for node keys (flwr.supercore.primitives.asymmetric.generate_key_pairs).
NODE_KEY_CURVE = ec.SECP384R1
_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class CertificateAuthority:
    """A self-signed CA: its PEM certificate (give to every site) and private key (keep)."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class ServerCertificate:
    """The SuperLink's TLS certificate and private key, signed by the CA."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class SiteKeys:
    """One site's SuperNode authentication key pair (OpenSSH format)."""

    site: str
    private_key: Path
    public_key: Path


@dataclass(frozen=True)
class Registration:
    """The outcome of registering one site's public key with a SuperLink.

    ``node_id`` is the id the SuperLink gave the key, or ``None`` when the key was registered
    before (``already_registered``): Flower 1.41 refuses a key twice and does not say which
    node holds it.
    """

    site: str
    node_id: int | None
    already_registered: bool


class RegistrationError(RuntimeError):
    """``flwr supernode register`` failed for a reason other than a known key."""


def make_ca(
    directory: Path,
    *,
    common_name: str = "fedretrain CA",
    valid_days: int = 3650,
    overwrite: bool = False,
) -> CertificateAuthority:
    """Create a self-signed CA as ``ca.crt`` and ``ca.key`` in ``directory``.

    Parameters
    ----------
    directory : Path
        Created if missing.
    common_name : str
        The CA's subject common name.
    valid_days : int
        Validity from now (backdated five minutes for clock skew).
    overwrite : bool
        Replace existing files. A new CA invalidates every certificate the old one signed, so
        the default refuses.

    Returns
    -------
    CertificateAuthority
        The paths written.

    Raises
    ------
    FileExistsError
        If ``ca.crt`` or ``ca.key`` exists and ``overwrite`` is false.
    """
    ca = CertificateAuthority(cert=Path(directory) / "ca.crt", key=Path(directory) / "ca.key")
    _refuse_existing([ca.cert, ca.key], overwrite)
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA384())
    )
    _write(ca.key, _private_pem(key), PRIVATE_MODE)
    _write(ca.cert, cert.public_bytes(serialization.Encoding.PEM), PUBLIC_MODE)
    return ca


def make_server_certificate(
    directory: Path,
    ca: CertificateAuthority,
    hosts: Sequence[str] = (),
    *,
    valid_days: int = 825,
    overwrite: bool = False,
) -> ServerCertificate:
    """Create the SuperLink's certificate as ``server.pem`` and ``server.key``, signed by ``ca``.

    Parameters
    ----------
    directory : Path
        Created if missing.
    ca : CertificateAuthority
        The CA from :func:`make_ca`.
    hosts : sequence of str
        DNS names and IP addresses the sites use to reach the SuperLink. ``localhost``,
        ``127.0.0.1`` and ``::1`` are always added: the SuperLink's ServerApp process and
        the ``flwr`` CLI on the server dial the loopback address.
    valid_days : int
        Validity from now (backdated five minutes for clock skew).
    overwrite : bool
        Replace existing files.

    Returns
    -------
    ServerCertificate
        The paths written.

    Raises
    ------
    FileExistsError
        If a target exists and ``overwrite`` is false.
    ValueError
        If a host is empty.
    """
    server = ServerCertificate(
        cert=Path(directory) / "server.pem", key=Path(directory) / "server.key"
    )
    _refuse_existing([server.cert, server.key], overwrite)
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{ca.key} is not an EC private key")
    names = _subject_alt_names([*hosts, *LOOPBACK_HOSTS])
    common_name = next((h for h in hosts if h), "localhost")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), False
        )
        .sign(ca_key, hashes.SHA384())
    )
    _write(server.key, _private_pem(key), PRIVATE_MODE)
    _write(server.cert, cert.public_bytes(serialization.Encoding.PEM), PUBLIC_MODE)
    return server


def make_site_keys(
    directory: Path, sites: Iterable[str], *, overwrite: bool = False
) -> dict[str, SiteKeys]:
    """Create one SuperNode authentication key pair per site: ``<site>.key`` and ``<site>.pub``.

    The private key (OpenSSH format, unencrypted, P-384) goes to the site for
    ``flower-supernode --auth-supernode-private-key``; the public key (one OpenSSH line with
    the site name as comment) is registered with :func:`register_sites`.

    Parameters
    ----------
    directory : Path
        Created if missing.
    sites : iterable of str
        Site names: letters, digits, ``_``, ``.``, ``-``; they name the files.
    overwrite : bool
        Replace existing key files. A new key must be registered again.

    Returns
    -------
    dict[str, SiteKeys]
        The paths written, by site, in the order given.

    Raises
    ------
    ValueError
        If a site name is invalid or repeated.
    FileExistsError
        If a target exists and ``overwrite`` is false.
    """
    names = list(sites)
    for site in names:
        if not _SITE_NAME.match(site):
            raise ValueError(
                f"site name {site!r} is invalid: use 1-64 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"site names repeat: {names}")
    pairs = {
        site: SiteKeys(
            site=site,
            private_key=Path(directory) / f"{site}.key",
            public_key=Path(directory) / f"{site}.pub",
        )
        for site in names
    }
    _refuse_existing([p for k in pairs.values() for p in (k.private_key, k.public_key)], overwrite)
    for site, pair in pairs.items():
        key = ec.generate_private_key(NODE_KEY_CURVE())
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        _write(pair.private_key, private, PRIVATE_MODE)
        _write(pair.public_key, public + f" {site}\n".encode(), PUBLIC_MODE)
    return pairs


def write_superlink_connection(
    flwr_home: Path,
    name: str,
    address: str,
    root_certificates: Path,
    *,
    default: bool = False,
) -> Path:
    """Add or replace the SuperLink connection ``name`` in ``flwr_home/config.toml``.

    Flower 1.41's CLI (``flwr run . NAME``, ``flwr supernode register KEY NAME``, ``flwr ls``)
    reads connections from there, not from the app's ``pyproject.toml``. Other connections
    and settings in the file are kept.

    Parameters
    ----------
    flwr_home : Path
        The folder Flower's CLI uses as ``$FLWR_HOME`` (default ``~/.flwr``).
    name : str
        The connection name.
    address : str
        ``host:port`` of the SuperLink's HTTP API (Control API), no URL scheme.
    root_certificates : Path
        The CA certificate that signed the SuperLink's; stored as an absolute path, which
        Flower requires.
    default : bool
        Also make it the connection used when none is named.

    Returns
    -------
    Path
        The config file written.
    """
    path = Path(flwr_home) / "config.toml"
    config: dict[str, Any] = tomli.loads(path.read_text()) if path.exists() else {}
    superlink = config.setdefault("superlink", {})
    superlink[name] = {
        "address": address,
        "root-certificates": str(Path(root_certificates).resolve()),
    }
    if default:
        superlink["default"] = name
    _write(path, tomli_w.dumps(config).encode(), PRIVATE_MODE)
    return path


def register_sites(
    keys: Iterable[SiteKeys],
    connection: str,
    *,
    flwr_home: Path | None = None,
    flwr: str | Path = "flwr",
    timeout_s: float = 60.0,
) -> list[Registration]:
    """Register each site's public key with the SuperLink behind ``connection``.

    Runs ``flwr supernode register <site>.pub <connection> --name <site> --format json`` once
    per site. The SuperLink must run with ``--enable-supernode-auth`` (then only registered
    keys may connect) and be reachable through the connection's TLS settings. A key the
    SuperLink already knows is reported, not raised, so the call can be repeated.

    Parameters
    ----------
    keys : iterable of SiteKeys
        From :func:`make_site_keys`.
    connection : str
        A connection in ``$FLWR_HOME/config.toml`` (see :func:`write_superlink_connection`).
    flwr_home : Path, optional
        ``$FLWR_HOME`` for the CLI; the inherited environment's when omitted.
    flwr : str or Path
        The ``flwr`` executable.
    timeout_s : float
        Limit per registration.

    Returns
    -------
    list[Registration]
        One per site, in order.

    Raises
    ------
    RegistrationError
        If the CLI fails for another reason (SuperLink unreachable, TLS, bad key).
    """
    env = dict(os.environ)
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    results = []
    for pair in keys:
        command = [
            str(flwr),
            "supernode",
            "register",
            str(pair.public_key),
            connection,
            "--name",
            pair.site,
            "--format",
            "json",
        ]
        proc = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        results.append(_registration(pair.site, proc))
    return results


def _registration(site: str, proc: subprocess.CompletedProcess[str]) -> Registration:
    """Read one ``flwr supernode register --format json`` result."""
    reply = _last_json_object(proc.stdout)
    if proc.returncode == 0 and reply.get("success") and "node-id" in reply:
        return Registration(site=site, node_id=int(reply["node-id"]), already_registered=False)
    message = str(reply.get("error-message", "")) or (proc.stderr + proc.stdout).strip()
    if "already in use" in message.lower():
        return Registration(site=site, node_id=None, already_registered=True)
    raise RegistrationError(
        f"registering site {site!r} failed (exit {proc.returncode}): {message[-2000:]}"
    )


def _last_json_object(text: str) -> dict[str, Any]:
    """The JSON object the ``flwr`` CLI prints last, or ``{}``."""
    start = text.rfind("\n{")
    start = 0 if text.startswith("{") and start < 0 else start + 1
    try:
        value = json.loads(text[start:]) if text.strip() else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _subject_alt_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(h.strip() for h in hosts):
        if not host:
            raise ValueError("empty host name for the server certificate")
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates; a TLS server with an EC key signs handshakes and agrees keys."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _refuse_existing(paths: Iterable[Path], overwrite: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"refusing to overwrite {existing}; pass overwrite=True")


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` atomically with ``mode``, set before the bytes go in, so that a private
    key is never readable by others, even for a moment. A private key's folder gets a
    ``.gitignore`` first (:func:`_keep_keys_out_of_git`)."""

    def write(tmp: Path) -> None:
        os.chmod(tmp, mode)
        tmp.write_bytes(data)

    if path.suffix == ".key":
        _keep_keys_out_of_git(path.parent)
    atomic_replace(path, write)


GITIGNORE = (
    "# Written by fedretrain certs: private keys stay out of version control.\n"
    "# Certificates (*.crt, *.pem) and public keys (*.pub) may be shared.\n"
    "*.key\n"
)


def _keep_keys_out_of_git(directory: Path) -> None:
    """A credentials folder made inside a git work tree must not offer its private keys to
    ``git add``: write a ``.gitignore`` for ``*.key`` unless the folder has one already."""
    ignore = directory / ".gitignore"
    if not ignore.exists():
        directory.mkdir(parents=True, exist_ok=True)
        atomic_replace(ignore, lambda tmp: tmp.write_text(GITIGNORE))
