"""`mlapi up | api | worker | web | migrate | keys | train | models`: build Settings once and hand them
down."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from mlapi.settings import Settings

if TYPE_CHECKING:
    from starlette.types import ASGIApp


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlapi", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start Redis, PostgreSQL, the API, the workers and the web UI locally")
    api = commands.add_parser("api", help="serve the HTTP API")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    worker = commands.add_parser("worker", help="run one model worker process")
    worker.add_argument("--model", action="append", help="serve only this model (repeatable)")
    web = commands.add_parser("web", help="serve the web UI")
    web.add_argument("--host")
    web.add_argument("--port", type=int)
    commands.add_parser(
        "migrate",
        help="bring the database schema up to date, seed the bundled models and the admin key (MLAPI_ADMIN_KEY)",
    )
    from mlapi.keys import add_parser as keys_parser

    keys_parser(commands.add_parser("keys", help="create, list and revoke API keys (in PostgreSQL)"))
    train = commands.add_parser("train", help="train a model into the registry")
    train.add_argument("name", choices=["diabetes-risk", "iris"])
    train.add_argument("--data", type=Path, help="training data (CSV) for diabetes-risk")
    train.add_argument("--out", type=Path, help="folder of the bundled models (default: MLAPI_BUNDLED_MODELS_DIR)")
    train.add_argument("--version", type=int, default=1, help="version the trained spec is checked as")
    train.add_argument(
        "--profile-only", action="store_true",
        help="only write the reference profile (profile.json) of the model trained before, from its training split",
    )  # fmt: skip
    _models_parser(commands.add_parser("models", help="add, list, promote and remove the models served"))
    return parser


def _models_parser(models: argparse.ArgumentParser) -> None:
    from mlapi.runtimes import RUNTIMES  # the names only: no ML library is imported

    api = argparse.ArgumentParser(add_help=False)
    api.add_argument("--api", help="the API's URL (default: MLAPI_API_URL, else http://127.0.0.1:8000)")
    api.add_argument("--api-key", help="API key sent as a bearer token (default: MLAPI_API_KEY)")
    actions = models.add_subparsers(dest="action", required=True)
    add = actions.add_parser(
        "add", parents=[api], help="add a version of a model from a file; the spec is inferred here"
    )
    add.add_argument("name", help="the model's name: lowercase letters, digits and '-'")
    add.add_argument(
        "artifact",
        type=Path,
        help="the trained model: a scikit-learn estimator or pipeline saved with skops, an XGBoost model saved as "
        "JSON or UBJSON, a LightGBM Booster's text file, or an ONNX model",
    )
    add.add_argument(
        "--runtime", choices=sorted(RUNTIMES), help="the runtime that reads the file (default: told from its bytes)"
    )
    add.add_argument("--data", type=Path, help="CSV of sample rows: feature kinds, ranges, example (and metrics)")
    add.add_argument("--target", help="column of --data holding the true answer: metrics are computed on it")
    add.add_argument("--task", choices=["classification", "regression"], help="where the artifact does not say")
    add.add_argument("--promote", action="store_true", help="make the new version the default")
    add.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="TYPE",
        help="accept a type of a skops file that skops does not trust (repeatable)",
    )
    add.add_argument("--description", help="what the model predicts")
    add.add_argument("--spec", type=Path, help="a spec (JSON) to use instead of inferring one")
    add.add_argument(
        "--from-pickle", action="store_true", help="convert a pickle or joblib file you made yourself to skops"
    )
    actions.add_parser("list", parents=[api], help="models, versions, default version, status, ready workers")
    promote = actions.add_parser("promote", parents=[api], help="make a version the model's default")
    promote.add_argument("name")
    promote.add_argument("version", type=int)
    remove = actions.add_parser("remove", parents=[api], help="remove a version, or the whole model")
    remove.add_argument("name")
    remove.add_argument("version", type=int, nargs="?")


def _train(args: argparse.Namespace, settings: Settings) -> None:
    from mlapi.models.train import train_named

    out = args.out or settings.bundled_models_dir
    spec = train_named(args.name, args.data, out, args.version, only_profile=args.profile_only)
    if args.profile_only:
        print(f"profiled {spec.name}: {out / spec.name / 'profile.json'}")
    else:
        print(f"trained {spec.name} v{spec.version}: {json.dumps(spec.metrics)}")


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "models":  # a client of the API: it needs none of the services' settings
        from mlapi.models.manage import run

        raise SystemExit(run(args))
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s"
    )
    if args.command == "keys":
        from mlapi.keys import run as run_keys

        raise SystemExit(run_keys(args, settings))
    if args.command == "up":
        from mlapi.up import run_up

        run_up(settings)
    elif args.command == "api":
        from mlapi.api.app import create_app

        settings.api = settings.api.model_copy(update=_given(args, "host", "port"))
        app = create_app(settings)
        _settle_gc()
        _serve(app, settings.api.host, settings.api.port, settings)
    elif args.command == "worker":
        # One OpenMP thread in every thread of the worker, set before an OpenMP library loads: run_worker's
        # threadpool_limits(1) holds for the thread that calls it, and models load in another (to_thread), which
        # otherwise starts a pool whose threads cost a futex storm on every predict (strace: 30,000 futex calls
        # in 5 s under load, 11,000 with this; worker CPU per row -24%).
        os.environ["OMP_NUM_THREADS"] = "1"
        from mlapi.worker import run_worker

        if args.model:
            settings.worker = settings.worker.model_copy(update={"models": args.model})
        asyncio.run(run_worker(settings))
    elif args.command == "web":
        from mlapi.web import create_app as create_web

        settings.web = settings.web.model_copy(update=_given(args, "host", "port"))
        _serve(create_web(settings), settings.web.host, settings.web.port, settings)
    elif args.command == "migrate":
        from mlapi.storage.migrate import migrate

        for line in migrate(settings.require_database_url(), settings.bundled_models_dir, settings.admin_key):
            print(line)
    elif args.command == "train":
        _train(args, settings)


def _settle_gc() -> None:
    """Keep the cyclic garbage collector off the request path of a long-running server: what exists once the
    app is built (modules, routes, schemas) is frozen out of its scans, and young collections run every 10,000
    allocations instead of 700. It took about a sixth of the API's CPU under load (perf: gc_collect_main)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


def _serve(app: ASGIApp, host: str, port: int, settings: Settings) -> None:
    """Serve an ASGI app with uvicorn (uvloop and httptools where installed)."""
    import uvicorn

    # Idle keep-alive connections live longer than clients' and load balancers' pools keep them (httpx 5 s,
    # most balancers 60 s), so the server never closes a connection a client is about to reuse.
    uvicorn.run(
        app, host=host, port=port, log_level=settings.log_level.lower(), access_log=False,
        timeout_graceful_shutdown=5, timeout_keep_alive=75,
    )  # fmt: skip


def _given(args: argparse.Namespace, *names: str) -> dict[str, object]:
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def columns(rows: list[list[str]]) -> str:
    """A table for a terminal: the rows' cells aligned in columns (the first row is the header)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
