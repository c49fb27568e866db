"""``manage.py serve [daphne options]``: daphne, plus this product's process start-up and shutdown.

Daphne sends no lifespan events, so this command starts the reaper as soon as
the reactor runs, and on SIGTERM/SIGINT ends this process's generations as
``interrupted`` (content kept, viewers told) before the reactor stops.
Every HTTP scope carries the ``chat.transport`` extension (chat/transport.py),
so event streams can tell how far behind their client is.
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
        # Pass everything after "serve" to daphne untouched (its options start with "-").
        self.handle(daphne_args=argv[2:])

    def handle(self, *args, daphne_args, **options):
        from daphne.cli import CommandLineInterface
        from daphne.server import Server
        from twisted.internet import defer, reactor

        from chat import reaper, transport

        class ChatServer(Server):
            def run(self):
                reactor.callWhenRunning(lambda: asyncio.get_event_loop().call_soon(reaper.ensure_background))
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
