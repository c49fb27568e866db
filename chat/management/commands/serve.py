"""``manage.py serve [daphne options]``: daphne, plus this product's process start-up and shutdown.

Daphne sends no lifespan events, so this command starts the reaper as soon as
the reactor runs, and on SIGTERM/SIGINT ends this process's generations as
``interrupted`` (content kept, viewers told) before the reactor stops.
Every HTTP scope carries the ``chat.transport`` extension (chat/transport.py),
so event streams can tell how far behind their client is.

``--ensure-admin`` (``make run``) creates the first admin on an empty
database; once the server listens, one block on stdout ends the start-up:
the address to open and, on that first start, the admin's name and password.
"""

import asyncio
import os
import sys

from django.core.management.base import BaseCommand, SystemCheckError


class Command(BaseCommand):
    help = "Serve the app with daphne (all daphne options pass through; default 127.0.0.1:8000)."

    def add_arguments(self, parser):
        parser.add_argument("daphne_args", nargs="*", help="daphne options, e.g. -b 0.0.0.0 -p 8000")

    def run_from_argv(self, argv):
        # The system checks first (chat/checks.py): a misconfigured server refuses to start.
        try:
            self.check()
        except SystemCheckError as error:
            self.stderr.write(str(error))
            sys.exit(1)
        # Pass everything after "serve" to daphne untouched (its options start with "-"), but our own.
        args = argv[2:]
        first_admin = None
        if "--ensure-admin" in args:
            args = [a for a in args if a != "--ensure-admin"]
            from .ensure_admin import ensure_first_admin

            first_admin = ensure_first_admin()
        self.handle(daphne_args=args, first_admin=first_admin, welcome="--ensure-admin" in argv[2:])

    def handle(self, *args, daphne_args, first_admin=None, welcome=False, **options):
        from daphne.cli import CommandLineInterface
        from daphne.server import Server
        from twisted.internet import defer, reactor

        from chat import reaper, transport

        class ChatServer(Server):
            def run(self):
                reactor.callWhenRunning(lambda: asyncio.get_event_loop().call_soon(reaper.ensure_background))
                if welcome:
                    # After daphne's own lines: when every endpoint listens (or failed to).
                    reactor.callWhenRunning(
                        lambda: defer.DeferredList(self.listeners).addCallback(
                            lambda _: print_welcome(self.listening_addresses, first_admin)
                        )
                    )
                reactor.addSystemEventTrigger(
                    "before",
                    "shutdown",
                    lambda: defer.Deferred.fromFuture(asyncio.ensure_future(reaper.shutdown())),
                )
                super().run()

            def create_application(self, protocol, scope):
                if scope["type"] == "http":
                    transport.add_to_scope(scope, protocol)
                return super().create_application(protocol, scope)

        class ChatCLI(CommandLineInterface):
            server_class = ChatServer

        args = list(daphne_args)
        if not any(a in ("-b", "--bind") or a.startswith("--bind=") for a in args) and not any(
            a in ("-u", "--unix-socket", "--fd", "-e", "--endpoint") for a in args
        ):
            args += ["-b", "127.0.0.1"]
        if not any(a == "--access-log" or a.startswith("--access-log=") for a in args):
            # chat.request logs every request (with its request id, as JSON in
            # production); daphne's own plain access lines would duplicate them.
            args += ["--access-log", os.devnull]
        ChatCLI().run([*args, "config.asgi:application"])
        sys.exit(0)


def print_welcome(addresses, first_admin) -> None:
    """Write the start-up block to stdout: where to open the app, and the first admin's credentials if just made."""
    from .ensure_admin import credentials_lines

    if not addresses:
        return
    host, port = addresses[0]
    # A wildcard address is not one a browser can open; this machine can.
    shown = "localhost" if host in ("0.0.0.0", "::", "") else (f"[{host}]" if ":" in host else host)
    lines = ["", "=" * 72, f"  Team Chat is running: open http://{shown}:{port}/"]
    if first_admin is not None:
        lines += ["", "  First start: an admin account was created. Sign in with"]
        lines += ["  " + line for line in credentials_lines(*first_admin)]
    lines += ["", "  Stop it with Ctrl+C.", "=" * 72, ""]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
