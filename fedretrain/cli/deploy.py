"""``fedretrain certs | server | agent``: a deployment on Flower's deployment engine.

The deployment modules (and Flower) are imported only when one of these commands runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fedretrain.cli.errors import CliError


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``certs``, ``server`` and ``agent`` to the ``fedretrain`` parser's commands."""
    certs = commands.add_parser("certs", help="credentials of a deployment (CA, server, sites)")
    steps = certs.add_subparsers(dest="step", required=True, metavar="STEP")
    init = steps.add_parser(
        "init",
        help="make the CA and the SuperLink's TLS certificate",
        description="Make ca.crt/ca.key and server.pem/server.key in CREDS. The certificate "
        "names localhost and 127.0.0.1 plus every --host: give each name or address the sites "
        "dial.",
    )
    init.add_argument("creds", metavar="CREDS")
    init.add_argument("--host", action="append", default=[], help="a name or IP sites dial")
    init.set_defaults(handler=_certs_init)
    site = steps.add_parser(
        "site",
        help="make sites' authentication key pairs",
        description="Make NAME.key (private, give to the site) and NAME.pub (registered by "
        "the server) in CREDS for each NAME.",
    )
    site.add_argument("creds", metavar="CREDS")
    site.add_argument("names", metavar="NAME", nargs="+")
    site.set_defaults(handler=_certs_site)
    register = steps.add_parser(
        "register",
        help="register site public keys with a running SuperLink",
        description="Register KEY.pub files (default: every *.pub in CREDS) with the SuperLink "
        "at --superlink. fedretrain server registers every *.pub in CREDS when it starts; use "
        "this for a site added while it runs.",
    )
    register.add_argument("creds", metavar="CREDS")
    register.add_argument("keys", metavar="KEY.pub", nargs="*")
    register.add_argument("--superlink", required=True, metavar="HOST:PORT")
    register.set_defaults(handler=_certs_register)

    server = commands.add_parser(
        "server",
        help="run the retraining server: SuperLink with TLS and node auth, and the app",
        description="Start Flower's SuperLink (TLS, SuperNode authentication, its state in "
        "RUN_DIR/deploy), register every site key in CREDS, and run the retraining app with "
        "the Hydra OVERRIDES (scenario=deployed and its schema). Started again on the same "
        "RUN_DIR it resumes the run.",
    )
    server.add_argument("--run-dir", required=True, metavar="RUN_DIR")
    server.add_argument("--creds", required=True, metavar="CREDS")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on")
    server.add_argument("--port", type=int, default=9092)
    server.add_argument("overrides", metavar="OVERRIDE", nargs="*", help="Hydra overrides")
    server.set_defaults(handler=_server)

    agent = commands.add_parser(
        "agent",
        help="run a site: a SuperNode serving the site's data folder",
        description="Run Flower's SuperNode with fedretrain's ClientApp on the files in DATA "
        "(CSV or Parquet, checked against the federation's schema).",
    )
    agent.add_argument("--superlink", required=True, metavar="HOST:PORT")
    agent.add_argument("--data", required=True, metavar="DATA")
    agent.add_argument("--site-id", required=True, type=int)
    agent.add_argument("--ca", required=True, help="the federation's ca.crt")
    agent.add_argument("--key", required=True, help="this site's private key (NAME.key)")
    agent.add_argument("--state-dir", help="default: DATA/.fedretrain-agent")
    agent.add_argument(
        "--runtime-port", type=int, default=9094, help="the SuperNode's local API port"
    )
    agent.add_argument(
        "--allow-targets",
        default="fedretrain",
        metavar="PACKAGES",
        help="comma-separated packages whose _target_s (data stream, model factory) this site "
        "builds from a run's config (default: fedretrain)",
    )
    agent.set_defaults(handler=_agent)


def _certs_init(args: argparse.Namespace) -> int:
    from fedretrain.deploy.certs import make_ca, make_server_certificate

    creds = Path(args.creds)
    try:
        ca = make_ca(creds)
        server = make_server_certificate(creds, ca, args.host)
    except FileExistsError as err:
        raise CliError(f"{err}: CREDS already holds a CA; remove it to start over") from None
    print(f"CA: {ca.cert} (give to every site), {ca.key} (keep private)")
    print(f"SuperLink: {server.cert}, {server.key}")
    return 0


def _certs_site(args: argparse.Namespace) -> int:
    from fedretrain.deploy.certs import make_site_keys

    try:
        keys = make_site_keys(Path(args.creds), args.names)
    except FileExistsError as err:
        raise CliError(f"{err}: a site keeps its key; pick a new name") from None
    for pair in keys.values():
        print(f"{pair.site}: {pair.private_key} (give to the site), {pair.public_key}")
    return 0


def _certs_register(args: argparse.Namespace) -> int:
    import tempfile

    from fedretrain.deploy.certs import (
        RegistrationError,
        SiteKeys,
        register_sites,
        write_superlink_connection,
    )
    from fedretrain.deploy.launch import flower_bin
    from fedretrain.deploy.server import site_public_keys

    creds = Path(args.creds)
    keys = [SiteKeys(Path(k).stem, Path(k).with_suffix(".key"), Path(k)) for k in args.keys]
    keys = keys or site_public_keys(creds)
    if not keys:
        raise CliError(f"no *.pub in {creds}: make site keys with `fedretrain certs site`")
    with tempfile.TemporaryDirectory() as home:
        write_superlink_connection(Path(home), "fedretrain", args.superlink, creds / "ca.crt")
        try:
            done = register_sites(keys, "fedretrain", flwr_home=Path(home), flwr=flower_bin("flwr"))
        except RegistrationError as err:
            raise CliError(str(err)) from None
    for r in done:
        print(
            f"{r.site}: " + ("already registered" if r.already_registered else f"node {r.node_id}")
        )
    return 0


def _server(args: argparse.Namespace) -> int:
    from fedretrain.deploy.server import DeployError, ServerOptions, serve

    options = ServerOptions(
        run_dir=Path(args.run_dir),
        creds=Path(args.creds),
        overrides=tuple(args.overrides),
        host=args.host,
        port=args.port,
    )
    try:
        return serve(options)
    except DeployError as err:
        raise CliError(str(err)) from None
    except KeyboardInterrupt:
        print("fedretrain server: stopped; start it again on the same --run-dir to resume")
        return 130


def _agent(args: argparse.Namespace) -> int:
    import signal

    from fedretrain.deploy.agent import AgentOptions, run_agent
    from fedretrain.deploy.trust import parse_allowed

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    return run_agent(
        AgentOptions(
            superlink=args.superlink,
            data=Path(args.data),
            site_id=args.site_id,
            ca=Path(args.ca),
            key=Path(args.key),
            state_dir=Path(args.state_dir) if args.state_dir else None,
            runtime_port=args.runtime_port,
            allow_targets=parse_allowed(args.allow_targets),
        )
    )
