"""The deployment files (Dockerfile, docker-compose.yml, docker/, .env.example), read as text.

There is no Docker engine here, so these tests check what a reader would: the
services and their health gates, that every variable named anywhere is one the
app or an image really reads, and that nginx streams events unbuffered. nginx's
own parser checks docker/nginx.conf (`make test` installs nginx).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.servers import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
HEALTHCHECK = ROOT / "docker" / "healthcheck.py"
NGINX_CONF = ROOT / "docker" / "nginx.conf"
ENV_EXAMPLE = ROOT / ".env.example"

# Variables that no settings module reads but that something else does.
POSTGRES_IMAGE_VARS = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"}
ENSURE_ADMIN_VARS = {"DJANGO_SUPERUSER_USERNAME", "DJANGO_SUPERUSER_PASSWORD"}
OTHER_VARS = {
    "DJANGO_SETTINGS_MODULE",  # manage.py / Django
    "RUN_MIGRATIONS",  # docker/entrypoint.sh
    "HTTP_PORT",  # docker-compose.yml: nginx's published port
}
SECRETS = {"SECRET_KEY", "LLM_API_KEY", "POSTGRES_PASSWORD", "DJANGO_SUPERUSER_PASSWORD"}
# env("NAME"), env.bool("NAME", default=False), env.list("NAME", default=[...]), ...
SETTINGS_CALL = re.compile(r'\benv(?:\.\w+)?\(\s*"([A-Z][A-Z0-9_]*)"(?:\s*,\s*default=([^)]*))?\)')


def settings_variables() -> dict[str, str | None]:
    """NAME -> default (as written) for every env("NAME"...) / env.<cast>("NAME"...) call in config/settings/."""
    found = {}
    for path in sorted((ROOT / "config" / "settings").glob("*.py")):
        for match in SETTINGS_CALL.finditer(path.read_text()):
            found.setdefault(match[1], match[2])
    return found


def known_variables() -> set[str]:
    return set(settings_variables()) | POSTGRES_IMAGE_VARS | ENSURE_ADMIN_VARS | OTHER_VARS


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def env_example_lines() -> list[tuple[int, str, str, bool]]:
    """(line number, NAME, value, commented out) for each NAME=value line of .env.example, set or commented."""
    entries = []
    for number, line in enumerate(ENV_EXAMPLE.read_text().splitlines(), start=1):
        match = re.fullmatch(r"(#\s*)?([A-Z][A-Z0-9_]*)=(.*)", line)
        if match:
            entries.append((number, match[2], match[3], bool(match[1])))
    return entries


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def dockerfile_stage(name: str) -> list[tuple[str, str]]:
    stages, current = {}, None
    for keyword, arguments in dockerfile_instructions():
        if keyword == "FROM":
            current = arguments.split()[-1] if " AS " in arguments.upper() else arguments
            stages[current] = []
        stages[current].append((keyword, arguments))
    assert name in stages, f"Dockerfile has no stage named {name!r}; stages: {sorted(stages)}"
    return stages[name]


# --- docker-compose.yml ---------------------------------------------------------


def test_compose_has_the_five_services_with_their_images():
    services = compose()["services"]

    assert set(services) == {"db", "redis", "web1", "web2", "nginx"}
    assert services["db"]["image"] == "postgres:16-alpine"
    assert services["redis"]["image"] == "redis:7-alpine"
    for name in ("web1", "web2"):
        assert services[name]["build"] == {"context": ".", "target": "web"}, f"{name} must build the web target"
    assert services["web1"]["image"] == services["web2"]["image"], "web1 and web2 must run one image"
    # nginx is the Dockerfile's static stage: nginx:1.27-alpine with the collected static files.
    assert services["nginx"]["build"] == {"context": ".", "target": "static"}
    assert dockerfile_stage("static")[0] == ("FROM", "nginx:1.27-alpine AS static")


def test_every_service_but_nginx_has_a_health_check():
    services = compose()["services"]

    assert services["db"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    for name in ("web1", "web2"):
        assert services[name]["healthcheck"]["test"] == ["CMD", "python", "/app/docker/healthcheck.py"], name
    assert '"/healthz"' in HEALTHCHECK.read_text()


def test_services_start_only_once_what_they_need_is_healthy():
    services = compose()["services"]

    def waits_for(name):
        return {dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()}

    assert waits_for("web1") == {"db": "service_healthy", "redis": "service_healthy"}
    # web2 waits for web1, whose start-up runs the migrations.
    assert waits_for("web2") == {"db": "service_healthy", "redis": "service_healthy", "web1": "service_healthy"}
    assert waits_for("nginx") == {"web1": "service_healthy", "web2": "service_healthy"}
    # nginx resolves web1/web2 once: it must restart when compose recreates them.
    assert all(spec.get("restart") is True for spec in services["nginx"]["depends_on"].values())


def test_only_web1_runs_migrations():
    services = compose()["services"]

    assert services["web1"]["environment"]["RUN_MIGRATIONS"] == "1"
    assert services["web2"]["environment"]["RUN_MIGRATIONS"] == "0"
    entrypoint = ENTRYPOINT.read_text()
    assert re.search(r'if \[ "\$\{RUN_MIGRATIONS:-0\}" = 1 \]; then\s+python manage.py migrate --noinput', entrypoint)


def test_web_services_use_production_settings_postgres_and_redis():
    services = compose()["services"]

    for name in ("web1", "web2"):
        environment = services[name]["environment"]
        assert services[name]["env_file"] == ".env"
        assert environment["DJANGO_SETTINGS_MODULE"] == "config.settings.production"
        assert re.fullmatch(
            r"postgres://\$\{POSTGRES_USER[^}]*\}:\$\{POSTGRES_PASSWORD[^}]*\}@db:5432/\$\{POSTGRES_DB[^}]*\}",
            environment["DATABASE_URL"],
        ), environment["DATABASE_URL"]
        assert environment["REDIS_URL"] == "redis://redis:6379/0"


def test_the_database_lives_in_a_named_volume():
    data = compose()

    assert "pgdata:/var/lib/postgresql/data" in data["services"]["db"]["volumes"]
    assert "pgdata" in data["volumes"]


def test_nginx_publishes_a_configurable_port_and_mounts_its_config_read_only():
    nginx = compose()["services"]["nginx"]

    assert nginx["ports"] == ["${HTTP_PORT:-8080}:80"]
    assert "./docker/nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]


def test_compose_holds_no_secret():
    text = COMPOSE.read_text()

    assert compose()["services"]["db"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD")
    for name in SECRETS:
        assert not re.search(rf"^\s*{name}\s*[:=]\s*(?!\$\{{{name}\b)\S", text, re.MULTILINE), (
            f"docker-compose.yml sets {name} to a literal value; secrets belong in .env"
        )


def test_compose_names_only_variables_something_reads():
    data = compose()
    names = set(re.findall(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)", COMPOSE.read_text()))
    for service in data["services"].values():
        names |= set(service.get("environment", {}))

    unknown = names - known_variables()
    assert not unknown, f"docker-compose.yml names variables nothing reads: {sorted(unknown)}"


# --- .env.example ----------------------------------------------------------------


def test_env_example_lists_every_variable_the_settings_read():
    documented = {name for _, name, _, _ in env_example_lines()}

    missing = set(settings_variables()) - documented
    assert not missing, f".env.example does not mention {sorted(missing)}, which config/settings/ reads"
    assert ENSURE_ADMIN_VARS | POSTGRES_IMAGE_VARS | {"DJANGO_SETTINGS_MODULE"} <= documented
    for name in ENSURE_ADMIN_VARS:
        assert f'"{name}"' in (ROOT / "chat/management/commands/ensure_admin.py").read_text()


def test_env_example_names_only_variables_something_reads():
    unknown = {name for _, name, _, _ in env_example_lines()} - known_variables()
    assert not unknown, f".env.example names variables nothing reads: {sorted(unknown)}"


def test_env_example_explains_each_variable_in_a_comment_above_it():
    lines = ENV_EXAMPLE.read_text().splitlines()
    seen = set()
    for number, name, _, _ in env_example_lines():
        if name in seen:
            continue  # provider examples repeat names explained above
        seen.add(name)
        above = lines[number - 2]
        assert above.startswith("# ") and not re.match(r"#\s*[A-Z][A-Z0-9_]*=", above), (
            f".env.example line {number}: {name} needs a one-line comment above it, found {above!r}"
        )


def test_env_example_holds_no_secret():
    for number, name, value, _ in env_example_lines():
        if name in SECRETS:
            assert value == "", f".env.example line {number}: {name} must be empty, not {value!r}"


def test_env_example_shows_the_six_provider_examples():
    text = ENV_EXAMPLE.read_text()

    for url in (
        "https://api.openai.com/v1",
        "https://api.deepseek.com",
        "https://dashscope.aliyuncs.com/compatible-mode/v1",
        "https://dashscope.aliyuncs.com/api/v1",
        "http://127.0.0.1:11434/v1",
        "http://127.0.0.1:8000/v1",
    ):
        assert f"# LLM_BASE_URL={url}" in text, f".env.example has no example for {url}"
    assert "# LLM_API=dashscope" in text


def test_env_example_shows_the_settings_defaults_for_tuning():
    defaults = settings_variables()
    for number, name, value, commented in env_example_lines():
        if commented and (name.startswith("CHAT_") or name.endswith("_TIMEOUT")):
            default = defaults[name]
            if default[:1] in "'\"":  # a text setting, e.g. CHAT_CURRENCY
                assert value == default.strip("'\""), f".env.example line {number}: {name}={value}; default {default}"
                continue
            expected = float(default.replace("_", ""))
            assert float(value) == expected, (
                f".env.example line {number}: {name}={value}; base.py's default: {expected}"
            )


def test_env_example_as_it_stands_loads_the_production_settings():
    script = (
        "import environ, os; environ.Env.read_env('.env.example', overwrite=True); "
        "os.environ['SECRET_KEY'] = 'test-not-secret'; "
        "import django; django.setup(); from django.conf import settings; "
        "print(settings.LLM_API, settings.ALLOWED_HOSTS, settings.LLM_MODELS, settings.CHAT_LEASE_SECONDS)"
    )
    environment = {k: v for k, v in os.environ.items() if k not in known_variables()}
    environment["DJANGO_SETTINGS_MODULE"] = "config.settings.production"

    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=environment, capture_output=True, text=True)

    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "openai"


# --- Dockerfile and docker/ ------------------------------------------------------


def test_dockerfile_web_stage_is_slim_and_runs_as_a_non_root_user():
    web = dockerfile_stage("web")

    assert web[0] == ("FROM", "python:3.11-slim AS web")
    users = [arguments for keyword, arguments in web if keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), f"the web image must end as a non-root USER, not {users}"
    installs = [arguments for keyword, arguments in web if keyword == "RUN" and "pip install" in arguments]
    assert any("pip install --require-hashes -r requirements/production.lock" in run for run in installs), installs
    assert ("EXPOSE", "8000") in web


def test_dockerfile_collects_static_files_with_a_build_only_key():
    web = dockerfile_stage("web")
    runs = [arguments for keyword, arguments in web if keyword == "RUN" and "collectstatic" in arguments]

    assert len(runs) == 1, "the web stage must run collectstatic once"
    assert "DJANGO_SETTINGS_MODULE=config.settings.production" in runs[0]
    assert re.search(r"\bSECRET_KEY=\S+ ", runs[0]), "collectstatic needs an inline SECRET_KEY"
    assert "--noinput" in runs[0]
    baked = [arguments for keyword, arguments in dockerfile_instructions() if keyword in ("ENV", "ARG")]
    assert not any("SECRET_KEY" in arguments for arguments in baked), "SECRET_KEY must not be baked into ENV/ARG"
    assert ("COPY", "--from=web /app/staticfiles /srv/static") in dockerfile_stage("static")


def test_dockerfile_health_check_and_command():
    web = dockerfile_stage("web")
    instructions = dict(web)

    assert instructions["HEALTHCHECK"].endswith('CMD ["python", "/app/docker/healthcheck.py"]')
    assert instructions["CMD"] == '["/bin/sh", "/app/docker/entrypoint.sh"]'


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_image():
    ignored = (ROOT / ".dockerignore").read_text().splitlines()

    for entry in (".env", ".git", ".venv", "/db.sqlite3", "/staticfiles"):
        assert entry in ignored, f".dockerignore must list {entry}"


def test_collectstatic_succeeds_with_the_build_settings():
    environment = {k: v for k, v in os.environ.items() if k not in known_variables()}
    environment |= {"DJANGO_SETTINGS_MODULE": "config.settings.production", "SECRET_KEY": "build-only"}

    result = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "--dry-run"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
    )

    assert result.returncode == 0, result.stderr
    assert "static files copied" in result.stdout


def test_entrypoint_serves_with_options_daphne_accepts():
    from daphne.cli import CommandLineInterface

    command = re.search(r"^exec python manage.py serve (.+)$", ENTRYPOINT.read_text(), re.MULTILINE)
    assert command, "docker/entrypoint.sh must exec `python manage.py serve ...`"
    arguments = command[1].replace('"${PORT:-8000}"', "8000").split()

    parsed = CommandLineInterface().parser.parse_args([*arguments, "config.asgi:application"])

    assert (parsed.host, parsed.port, parsed.proxy_headers) == ("0.0.0.0", 8000, True)


@pytest.mark.processes
def test_entrypoint_migrates_creates_the_admin_and_passes_its_health_check(tmp_path):
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if k not in known_variables()}
    environment |= {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DJANGO_SETTINGS_MODULE": "config.settings.production",
        "SECRET_KEY": "test-not-secret",
        # Django answers 400 to any other Host: the health check must send this one.
        "ALLOWED_HOSTS": "chat.example.com",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "REDIS_URL": "",
        "RUN_MIGRATIONS": "1",
        "PORT": str(port),
    }
    log = tmp_path / "entrypoint.log"
    with log.open("w") as out:
        process = subprocess.Popen(["sh", str(ENTRYPOINT)], env=environment, stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            wait_for_port(port, timeout=60, proc=process)
        except (RuntimeError, TimeoutError) as exc:
            pytest.fail(f"{exc}\n{log.read_text()}")
        check = subprocess.run([sys.executable, str(HEALTHCHECK)], env=environment, capture_output=True, text=True)
        assert check.returncode == 0, f"health check failed: {check.stdout}\n{log.read_text()}"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)

    output = log.read_text()
    assert "Applying chat.0001_initial... OK" in output
    assert "Created the first admin account." in output
    # exec: daphne itself got SIGTERM and shut down cleanly.
    assert process.returncode == 0, output


def test_health_check_fails_when_nothing_listens():
    environment = os.environ | {"PORT": str(free_port())}

    check = subprocess.run([sys.executable, str(HEALTHCHECK)], env=environment, capture_output=True, text=True)

    assert check.returncode == 1
    assert "/healthz unreachable" in check.stdout


# --- docker/nginx.conf -----------------------------------------------------------


def nginx_directives() -> str:
    """nginx.conf without comments, one directive per line, whitespace collapsed."""
    text = re.sub(r"#.*", "", NGINX_CONF.read_text())
    return "\n".join(" ".join(line.split()) for line in text.splitlines() if line.strip())


def test_nginx_balances_over_both_web_services():
    upstream = re.search(r"upstream web \{(.*?)\}", nginx_directives(), re.DOTALL)

    assert upstream, "nginx.conf needs an `upstream web { ... }` block"
    assert "server web1:8000;" in upstream[1] and "server web2:8000;" in upstream[1]
    assert "proxy_pass http://web;" in nginx_directives()


def test_nginx_streams_events_unbuffered():
    directives = nginx_directives()

    for directive in (
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_buffering off;",
        "proxy_cache off;",
        "gzip off;",
        "client_max_body_size 1m;",
    ):
        assert directive in directives, f"nginx.conf lacks `{directive}`"
    timeout = re.search(r"proxy_read_timeout (\d+)s;", directives)
    assert timeout and int(timeout[1]) >= 3600, "proxy_read_timeout must be at least 3600s"
    # gzip, where it is on, must never cover event streams.
    assert "text/event-stream" not in directives


def test_nginx_forwards_the_client_host_address_and_scheme():
    directives = nginx_directives()

    for header in ("Host", "X-Forwarded-For", "X-Forwarded-Proto"):
        assert re.search(rf"proxy_set_header {header} \$\w+;", directives), f"nginx.conf does not set {header}"


def test_nginx_caches_hashed_static_names_for_good_and_plain_ones_briefly():
    static = re.search(r"location /static/ \{(.*)\n\}", nginx_directives(), re.DOTALL)
    hashed = re.search(r'location ~ "([^"]+)" \{(.*?)\}', static[1], re.DOTALL)

    assert hashed, "nginx.conf needs a location for hashed names inside /static/"
    assert 'add_header Cache-Control "public, max-age=31536000, immutable";' in hashed[2]
    assert re.search(hashed[1], "chat/js/main.3f2a9c1e07b4.js") and not re.search(hashed[1], "chat/js/main.js")
    assert "expires 1h;" in static[1]


def test_nginx_serves_static_files_from_where_the_image_puts_them():
    static = re.search(r"location /static/ \{(.*?)\}", nginx_directives(), re.DOTALL)

    assert static, "nginx.conf needs a `location /static/` block"
    assert "alias /srv/static/;" in static[1]
    assert ("COPY", "--from=web /app/staticfiles /srv/static") in dockerfile_stage("static")


NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


def local_nginx_config(tmp_path, port: int) -> list[str]:
    """docker/nginx.conf made runnable here, in ``tmp_path`` (static files in tmp_path/static): nginx's command line.

    Container names resolve only inside compose. nginx binds the listen port
    and opens its paths: a free port and tmp_path let it run as any user.
    """
    if NGINX is None:
        pytest.fail(
            "nginx is not installed: this test runs it on docker/nginx.conf. "
            "Install it with `make test-deps` (as root) or `sudo apt-get install -y nginx`.",
            pytrace=False,
        )
    (tmp_path / "static").mkdir(exist_ok=True)
    mime_types = Path("/etc/nginx/mime.types")
    (tmp_path / "mime.types").write_text(mime_types.read_text() if mime_types.exists() else "types {}\n")
    config = (
        NGINX_CONF.read_text()
        .replace("listen 80;", f"listen 127.0.0.1:{port};")
        .replace("web1:8000", "127.0.0.1:18001")
        .replace("web2:8000", "127.0.0.1:18002")
        .replace("/etc/nginx/mime.types", str(tmp_path / "mime.types"))
        .replace("/srv/static/", f"{tmp_path / 'static'}/")
        .replace("/var/log/nginx/", f"{tmp_path}/")
    )
    temp_paths = "".join(
        f"    {kind}_temp_path {tmp_path / kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    config = config.replace("http {\n", "http {\n" + temp_paths, 1)
    assert not re.search(r"web1|/srv/|/var/log/|listen 80;", config), "nginx.conf changed: update this test's rewrites"
    (tmp_path / "nginx.conf").write_text(config)
    return [NGINX, "-p", f"{tmp_path}/", "-e", "error.log", "-c", "nginx.conf"]


def test_nginx_accepts_the_config(tmp_path):
    command = [*local_nginx_config(tmp_path, free_port()), "-t", "-g", "pid nginx.pid;"]

    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)

    assert result.returncode == 0, f"nginx -t rejected docker/nginx.conf:\n{result.stderr}"
    assert "test is successful" in result.stderr


def test_production_names_static_files_by_their_hash():
    script = (
        "import django; django.setup(); from django.conf import settings; "
        "print(settings.STORAGES['staticfiles']['BACKEND'], settings.SERVE_STATIC)"
    )
    environment = {k: v for k, v in os.environ.items() if k not in known_variables()}
    environment |= {"DJANGO_SETTINGS_MODULE": "config.settings.production", "SECRET_KEY": "test-not-secret"}

    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=environment, capture_output=True, text=True)

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["chat.staticfiles.HashedStaticFilesStorage", "False"]


def test_nginx_serves_hashed_static_names_immutable_and_plain_ones_for_an_hour(tmp_path):
    """Real nginx on docker/nginx.conf over files collected with production's hashed storage."""
    from django.conf import settings
    from django.core.management import call_command
    from django.test import override_settings

    storages = {**settings.STORAGES, "staticfiles": {"BACKEND": "chat.staticfiles.HashedStaticFilesStorage"}}
    with override_settings(STATIC_ROOT=tmp_path / "static", STORAGES=storages):
        call_command("collectstatic", interactive=False, verbosity=0)
    manifest = json.loads((tmp_path / "static" / "staticfiles.json").read_text())["paths"]
    port = free_port()
    # As root, nginx's workers run as nobody, who may not read tmp_path.
    globals_ = "daemon off; pid nginx.pid;" + (" user root;" if os.geteuid() == 0 else "")
    proc = subprocess.Popen([*local_nginx_config(tmp_path, port), "-g", globals_], cwd=tmp_path)
    try:
        wait_for_port(port, proc=proc)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            hashed = client.get(f"/static/{manifest['chat/js/main.js']}")
            plain = client.get("/static/chat/js/main.js")
            missing = client.get("/static/chat/js/main.0123456789ab.js")
    finally:
        proc.terminate()
        proc.wait(10)

    assert hashed.status_code == 200 and hashed.headers["content-type"] == "application/javascript"
    assert hashed.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert plain.status_code == 200 and plain.headers["cache-control"] == "max-age=3600"
    # A 404 is never cached for good: the file may be deployed a minute later.
    assert missing.status_code == 404 and "immutable" not in missing.headers.get("cache-control", "")


# --- requirements/: the inputs (*.in) and their hashed locks (*.lock) ---------------

REQUIREMENTS = ROOT / "requirements"
# name[extras]==version, as an input pins it.
PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(\S+)")
LOCKED = re.compile(r"([a-z0-9][a-z0-9.-]*)==(\S+)((?: --hash=sha256:[0-9a-f]{64})+)")


def normalized(name: str) -> str:
    """A package name as PyPI compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def input_pins(path: Path) -> dict[str, str]:
    """name -> version for every requirement of an input file, its ``-r`` includes followed."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-r "):
            pins |= input_pins(path.parent / line[3:].strip())
            continue
        match = PIN.fullmatch(line)
        assert match, f"{path.name}: {line!r} is not pinned to one version with =="
        pins[normalized(match[1])] = match[2]
    return pins


def lock_entries(path: Path) -> dict[str, str]:
    """name -> version of every package of a lock; fails on a line that is not a pinned, hashed release."""
    text = re.sub(r"\s*\\\n\s*", " ", path.read_text())
    entries = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = LOCKED.fullmatch(line)
        assert match, f"{path.name}: {line[:100]!r} is not `name==version --hash=sha256:...`"
        entries[match[1]] = match[2]
    return entries


def test_every_input_has_its_lock():
    inputs = {path.stem for path in REQUIREMENTS.glob("*.in")}
    locks = {path.stem for path in REQUIREMENTS.glob("*.lock")}

    assert inputs == locks, f"inputs without a lock: {inputs - locks}; locks without an input: {locks - inputs}"
    assert {"build", "base", "dev", "production", "ldap"} <= inputs
    assert not list(REQUIREMENTS.glob("*.txt")), "requirements are *.in (edited) and *.lock (`make lock`)"


def test_every_lock_line_is_a_pinned_release_with_its_hashes():
    for lock in REQUIREMENTS.glob("*.lock"):
        assert lock_entries(lock), f"{lock.name} locks nothing"


def test_every_pin_of_an_input_is_in_its_lock_at_the_same_version():
    """A pin changed or added in a *.in file without `make lock` fails here."""
    for source in REQUIREMENTS.glob("*.in"):
        locked = lock_entries(source.with_suffix(".lock"))
        for name, version in input_pins(source).items():
            assert name in locked, f"{source.name} pins {name}, missing from {source.stem}.lock: run `make lock`"
            assert locked[name] == version, (
                f"{source.name} pins {name}=={version} but {source.stem}.lock has {locked[name]}: run `make lock`"
            )


def test_a_package_in_two_locks_is_the_same_release():
    seen: dict[str, tuple[str, str]] = {}
    for lock in sorted(REQUIREMENTS.glob("*.lock")):
        for name, version in lock_entries(lock).items():
            first = seen.setdefault(name, (version, lock.name))
            assert first[0] == version, f"{name} is {first[0]} in {first[1]} but {version} in {lock.name}"


def test_locks_are_for_the_images_python():
    python = re.search(r"^FROM python:(\d+\.\d+)", DOCKERFILE.read_text(), re.MULTILINE)[1]
    makefile = (ROOT / "Makefile").read_text()

    assert f"--python-version {python}" in makefile
    assert "--python-platform x86_64-unknown-linux-gnu" in makefile
    assert "--generate-hashes" in makefile


def test_every_install_uses_a_lock_with_hashes():
    """Makefile, Dockerfile and scripts/: each `pip install` checks hashes and reads a lock, nothing else."""
    makefile = (ROOT / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+) :?= (.*)$", makefile, re.MULTILINE))
    files = {"Makefile": makefile, "Dockerfile": DOCKERFILE.read_text()}
    files |= {f"scripts/{path.name}": path.read_text() for path in (ROOT / "scripts").iterdir() if path.is_file()}
    installs = []
    for name, text in files.items():
        text = re.sub(r"\$\((\w+)\)", lambda match: variables.get(match[1], match[0]), text)
        for line in text.splitlines():
            # A comment, or the Makefile's definition that the lines using it were expanded with.
            if line.lstrip().startswith("#") or re.match(r"\w+ :?= ", line):
                continue
            if re.search(r"\bpip install\b", line):
                installs.append((name, line.strip()))
                assert "--require-hashes" in line, f"{name}: `{line.strip()}` does not check hashes"
                assert re.search(r" -r requirements/\w+\.lock\b", line), f"{name}: `{line.strip()}` reads no lock"
    assert {name for name, _ in installs} >= {"Makefile", "Dockerfile"}
