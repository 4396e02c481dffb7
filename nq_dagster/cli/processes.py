"""The `nq` commands that start long-lived processes: `nq serve` (the prediction server under uvicorn) and
`nq dev` (the Dagster UI with its daemon)."""

from __future__ import annotations

import errno
import os
import socket
import sys
from pathlib import Path

from nq_dagster.runner import prepare_home
from nq_dagster.settings import Settings, child_env


def bind_problem(host: str, port: int) -> str | None:
    """Why `host:port` cannot be listened on (checked before anything loads, so a busy port is reported at
    once, in one line), or None. SO_REUSEADDR as uvicorn binds: a port in TIME_WAIT is not busy."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"cannot resolve --host {host!r}: {exc.strerror}"
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"port {port} on {host} is in use (another server?): choose another with --port"
            if exc.errno == errno.EACCES:
                return f"no permission to listen on port {port} on {host}: use a port above 1023"
            return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def cmd_serve(args, settings: Settings) -> int:
    """The prediction server: every trained source's model in memory, under uvicorn. The port opens at once;
    the models load in the background (`/readyz` says when they have)."""
    import uvicorn

    from nq_dagster.serve.engine import Ownership
    from nq_dagster.serve.http.app import create_server
    from nq_dagster.serve.http.guard import uvicorn_options
    from nq_dagster.serve.logs import configure_logging
    from nq_dagster.serve.server_settings import ServerSettings

    problem = bind_problem(args.host, args.port)
    if problem:
        print(f"nq serve: {problem}", file=sys.stderr)
        return 2
    wh = prepare_home(settings)
    replicas = args.replicas or settings.serve_replicas
    replica = args.replica if args.replica is not None else settings.replica_index
    peers = args.peers or settings.serve_peers
    if "{i}" in peers:
        peers = ",".join(peers.replace("{i}", str(i)) for i in range(replicas))
    stream = args.stream or settings.serve_stream
    if stream:  # ownership by partition leases in the broker (serve/stream/leases.py), not by a count
        from nq_dagster.serve.engine.ownership import LeasedOwnership

        if args.replicas or args.peers:
            print(
                "nq serve: --stream shares the sources by partition leases: drop --replicas/--peers "
                "(give each replica its own --replica number)",
                file=sys.stderr,
            )
            return 2
        if args.partitions < 1 or args.lease_ttl <= 0:
            print("nq serve: --partitions must be >= 1 and --lease-ttl > 0", file=sys.stderr)
            return 2
        own = LeasedOwnership(replica, args.partitions)
    else:
        peer_list = tuple(p for p in peers.split(",") if p.strip())
        own = Ownership(replica if replicas > 1 else 0, replicas, peer_list)
    if stream:  # held for the process's life: survivors flush this journal only once this process is gone
        from nq_dagster.serve.stream.leases import hold_journal_lock

        try:
            journal_lock = hold_journal_lock(wh, own.replica, wait_s=1.5 * args.lease_ttl)  # noqa: F841
        except RuntimeError as exc:
            print(f"nq serve: {exc}", file=sys.stderr)
            return 2
    configure_logging(args.log_level.upper())
    # one torch thread: the server's parallelism is the batch of requests; torch's intra-op pool on top of the
    # event loop and the engine's worker only contends for the cores (bench/RESULTS.md, "Prediction server")
    import torch

    torch.set_num_threads(settings.serve_torch_threads)
    address = f"http://{args.host}:{args.port}"
    processes = args.processes or settings.serve_processes
    server = create_server(
        settings.with_home(wh.home),
        own,
        ServerSettings.load(wh),
        fsync=args.fsync,
        address=address,
        flush_interval_s=args.flush_interval,
        processes=processes,
        background=True,
    )
    keys = server.keys.list()
    owned = server.state.startup.owned
    print(
        f"nq serve: {address} (replica {own.replica}"
        f"{' of ' + str(own.replicas) if not stream else ', partitions by lease'}); data {wh.home}; loading "
        f"{len(owned)} source(s) in the background: {', '.join(owned) or 'none trained yet'} "
        f"(ready when {address}/readyz answers 200)",
        file=sys.stderr,
    )
    if not any(k.revoked_at is None for k in keys):
        print(
            "nq serve: no API key exists yet; every request will get 401. Create one: "
            "nq keys create --role developer",
            file=sys.stderr,
        )
    app = server.app
    if stream:
        from nq_dagster.serve.stream.leases import LeaseOptions
        from nq_dagster.serve.stream.nats import StreamOptions, TickStream, with_stream

        options = StreamOptions(max_values=server.state.settings.max_values)
        ticks = TickStream(
            server.engine,
            stream,
            options,
            server.state.metrics.registry,
            server.state.startup,
            address=address,
            leases=LeaseOptions(ttl_s=args.lease_ttl),
        )
        app = with_stream(app, ticks)
    # header size and time limits, keep-alive, connection cap, WebSocket message size (serve/http/guard.py)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        log_config=None,
        lifespan="on",
        timeout_graceful_shutdown=30,
        interface="asgi3",
        **uvicorn_options(),
    )
    return 0


def dev_command(port: int, host: str) -> tuple[list[str], Path | None]:
    """The command `nq dev` runs, and the directory to run it in: `dg dev` from the project's checkout (its
    pyproject.toml names the code location under [tool.dg]); `dagster dev -m nq_dagster.definitions` where the
    package is installed without its checkout or without dg. Both use the interpreter's own environment."""
    bin_dir = Path(sys.executable).parent
    project = Path(__file__).resolve().parents[2]  # nq_dagster/cli/processes.py -> the checkout
    pyproject = project / "pyproject.toml"
    if (bin_dir / "dg").exists() and pyproject.exists() and "[tool.dg]" in pyproject.read_text():
        return [str(bin_dir / "dg"), "dev", "--port", str(port), "--host", host], project
    exe = bin_dir / "dagster"
    return [
        str(exe) if exe.exists() else "dagster",
        "dev",
        "-m",
        "nq_dagster.definitions",
        "-p",
        str(port),
        "-h",
        host,
    ], None


def cmd_dev(args, settings: Settings) -> int:
    wh = prepare_home(settings)
    cmd, cwd = dev_command(args.port, args.host)
    extra = {}
    if cwd is not None:
        os.chdir(cwd)
        extra["VIRTUAL_ENV"] = str(Path(sys.executable).parent.parent)  # dg checks it is the project's
    print(f"DAGSTER_HOME={wh.dagster_home}\n$ {' '.join(cmd)}")
    # the UI, its daemon and the runs they launch see this data directory through their environment
    env = child_env(settings.model_copy(update={"dagster_home": wh.dagster_home}), **extra)
    os.execvpe(cmd[0], cmd, env)
    return 0
