"""docker-compose.yml cannot be run here (no Docker engine), so its consistency with the code is
checked by reading it: every variable it sets is one the code reads, every command starts
something that exists, and the published port is the one gunicorn binds. (Flower's command is
also run for real: tests/system/test_flower.py.)"""

from __future__ import annotations

import re

import yaml

from app.core import tracing
from app.settings import Settings
from tests.support.paths import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
# Read by a tool we run, not by our config: Flower reads FLOWER_* itself, the nginx image NGINX_*.
TOOL_SETTINGS = ("FLOWER_", "NGINX_")
# The gateway's configuration: GATEWAY_* are the names its template uses.
GATEWAY_TEMPLATE = ROOT / "deploy" / "nginx" / "postboard.conf.template"
# Servers from their own images, configured by those images' variables (the tracing profile's
# collector by a mounted file).
IMAGE_SERVICES = ("postgres", "redis", "rabbitmq", "otel-collector", "jaeger")
# The app's processes that trace (app/core/tracing.py), and compose's optional tracing profile.
TRACED = ("web", "worker", "webhooks", "relay", "beat")
TRACING_PROFILE = ("otel-collector", "jaeger")


def variables_the_code_reads() -> set[str]:
    gunicorn = (ROOT / "gunicorn.conf.py").read_text()
    names = set(re.findall(r"os\.environ(?:\.get)?[\(\[]\s*[\"']([A-Z0-9_]+)[\"']", gunicorn))
    gateway = set(re.findall(r"\$\{(GATEWAY_[A-Z0-9_]+)\}", GATEWAY_TEMPLATE.read_text()))
    return names | Settings.variables() | gateway | set(tracing.VARIABLES)


def read_by_the_sdk(variable: str) -> bool:
    """A standard OTEL_* variable OpenTelemetry's SDK reads itself (its own list of them): the
    one exception to "read by our code", since setting up the SDK is all our code does with it."""
    import opentelemetry.environment_variables as api
    import opentelemetry.sdk.environment_variables as sdk

    standard = {v for m in (api, sdk) for v in vars(m).values() if isinstance(v, str)}
    return variable.startswith("OTEL_") and variable in standard


def test_every_variable_compose_sets_is_read_by_the_code() -> None:
    read = variables_the_code_reads()
    assert {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "PORT", "WEB_CONCURRENCY"} <= read
    assert {"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME"} <= read
    assert read_by_the_sdk("OTEL_BSP_SCHEDULE_DELAY")  # the exception is the SDK's own list
    assert not read_by_the_sdk("OTEL_MADE_UP")
    assert not read_by_the_sdk("FLOWER_PORT")
    for name, service in SERVICES.items():
        for variable in service.get("environment") or {}:
            own = name in IMAGE_SERVICES or variable.startswith(TOOL_SETTINGS)
            if own or read_by_the_sdk(variable):
                continue  # the images', tools' and OpenTelemetry SDK's own settings
            assert variable in read, f"{name} sets {variable}, which the code never reads"


def test_every_variable_compose_sets_is_documented() -> None:
    documented = set(
        re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M)
    )
    for name, service in SERVICES.items():
        if name in IMAGE_SERVICES:
            continue
        for variable in service.get("environment") or {}:
            assert variable in documented, f"{variable} ({name}) is missing from .env.example"


def test_commands_start_what_the_code_provides() -> None:
    assert SERVICES["web"]["command"][:2] == ["gunicorn", "wsgi:app"]
    assert (ROOT / "wsgi.py").exists()
    assert SERVICES["web"]["command"][-1] == "gunicorn.conf.py"
    assert (ROOT / "gunicorn.conf.py").exists()
    assert SERVICES["worker"]["command"][:4] == ["celery", "-A", "worker", "worker"]
    assert SERVICES["beat"]["command"][:4] == ["celery", "-A", "worker", "beat"]
    assert (ROOT / "worker" / "__init__.py").exists()
    assert SERVICES["migrate"]["command"] == ["flask", "--app", "wsgi", "db", "upgrade"]


def test_only_the_gateway_is_published() -> None:
    """gunicorn's sync workers and Flower sit behind nginx: nothing else has a host port, but
    for the optional tracing profile's Jaeger UI, on loopback only (docs/tracing.md)."""
    published = {name for name, service in SERVICES.items() if service.get("ports")}
    assert published == {"gateway", "jaeger"}
    assert all(port.startswith("127.0.0.1:") for port in SERVICES["jaeger"]["ports"])
    assert SERVICES["gateway"]["ports"] == ["80:80", "443:443"]
    gateway = SERVICES["gateway"]["environment"]
    assert (gateway["GATEWAY_HTTP_PORT"], gateway["GATEWAY_HTTPS_PORT"]) == (80, 443)


def test_the_gateway_routes_to_the_services_and_ports_that_exist() -> None:
    gateway = SERVICES["gateway"]
    environment = gateway["environment"]
    web_host, web_port = environment["GATEWAY_WEB_UPSTREAM"].split(":")
    assert web_host == "web"
    assert SERVICES["web"]["environment"]["GUNICORN_BIND"] == f"0.0.0.0:{web_port}"
    assert SERVICES["web"]["expose"] == [web_port]
    flower_host, flower_port = environment["GATEWAY_FLOWER_UPSTREAM"].split(":")
    flower = SERVICES["flower"]
    assert flower_host == "flower"
    assert f"--port={flower_port}" in flower["command"]
    assert flower["expose"] == [flower_port]
    # Flower serves under the prefix the gateway routes (nginx passes the path unchanged).
    assert "--url_prefix=flower" in flower["command"]
    template = GATEWAY_TEMPLATE.read_text()
    assert "location /flower/      { proxy_pass http://postboard_flower; }" in template
    assert gateway["depends_on"]["web"]["condition"] == "service_healthy"
    assert set(gateway["depends_on"]) <= set(SERVICES)


def test_the_gateways_template_gets_every_value_it_uses() -> None:
    used = set(re.findall(r"\$\{(GATEWAY_[A-Z0-9_]+)\}", GATEWAY_TEMPLATE.read_text()))
    given = {name for name in SERVICES["gateway"]["environment"] if name.startswith("GATEWAY_")}
    assert used == given
    # The image substitutes only these names: nginx's own $variables stay as they are.
    assert SERVICES["gateway"]["environment"]["NGINX_ENVSUBST_FILTER"] == "^GATEWAY_"


def test_the_gateways_mounts_exist_and_its_certificate_paths_are_inside_them() -> None:
    gateway = SERVICES["gateway"]
    mounts = {}
    for volume in gateway["volumes"]:
        source, target, mode = volume.rsplit(":", 2)
        assert mode == "ro", volume
        source = re.sub(r"\$\{[A-Z_]+:-(.*)\}", r"\1", source)  # the default of ${VAR:-default}
        assert (ROOT / source).exists(), f"{source} is mounted but missing"
        mounts[target] = source
    # The official image renders /etc/nginx/templates/*.template into conf.d/ at start.
    template_target = next(t for t in mounts if t.startswith("/etc/nginx/templates/"))
    assert template_target.endswith(".template")
    assert ROOT / mounts[template_target] == GATEWAY_TEMPLATE
    environment = gateway["environment"]
    for name in ("GATEWAY_TLS_CERT", "GATEWAY_TLS_KEY"):
        assert environment[name].startswith("/etc/nginx/certs/")
    assert "/etc/nginx/certs" in mounts


def test_the_app_trusts_exactly_the_gateway_and_shares_its_body_limit() -> None:
    web, gateway = SERVICES["web"]["environment"], SERVICES["gateway"]["environment"]
    assert web["TRUSTED_PROXY_COUNT"] == 1
    # One variable drives both limits; its default is the app's.
    assert (
        COMPOSE["x-app"]["environment"]["MAX_CONTENT_LENGTH"] == gateway["GATEWAY_MAX_BODY_BYTES"]
    )
    default = re.fullmatch(r"\$\{MAX_CONTENT_LENGTH:-(\d+)\}", gateway["GATEWAY_MAX_BODY_BYTES"])
    assert default, gateway["GATEWAY_MAX_BODY_BYTES"]
    assert int(default.group(1)) == Settings.from_env("testing").max_content_length


def test_web_waits_for_healthy_dependencies_and_the_migration() -> None:
    depends = SERVICES["web"]["depends_on"]
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["redis"]["condition"] == "service_healthy"
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert "healthcheck" in SERVICES["postgres"]
    assert "pgdata" in COMPOSE["volumes"]


def test_tasks_go_to_rabbitmq_as_quorum_queues_and_results_stay_on_redis() -> None:
    from app.core.tasks import celery_config

    app_env = COMPOSE["x-app"]["environment"]
    broker, backend = app_env["CELERY_BROKER_URL"], app_env["CELERY_RESULT_BACKEND"]
    assert re.fullmatch(
        r"amqp://postboard:\$\{RABBITMQ_PASSWORD:-\w+\}@rabbitmq:5672/postboard", broker
    )
    rabbitmq = SERVICES["rabbitmq"]
    assert rabbitmq["environment"]["RABBITMQ_DEFAULT_VHOST"] == "postboard"
    assert rabbitmq["environment"]["RABBITMQ_DEFAULT_USER"] == "postboard"
    assert "rabbitmq-diagnostics" in rabbitmq["healthcheck"]["test"]
    assert "rabbitmqdata:/var/lib/rabbitmq" in rabbitmq["volumes"]
    assert "rabbitmqdata" in COMPOSE["volumes"]
    assert backend.startswith("redis://redis:6379/")
    for name, service in SERVICES.items():
        # The app's services but the migration (which never touches the broker) wait for it.
        if service.get("image") == COMPOSE["x-app"]["image"] and name != "migrate":
            assert service["depends_on"]["rabbitmq"]["condition"] == "service_healthy", name
    # What the code makes of these URLs: quorum queues, confirms, redbeat on the compose Redis.
    settings = Settings.from_env(
        "testing",
        CELERY_BROKER_URL=broker.replace("${RABBITMQ_PASSWORD:-postboard}", "pw"),
        CELERY_RESULT_BACKEND=backend,
        REDIS_URL=app_env["REDIS_URL"],
    )
    config = celery_config(settings.to_flask_config(), role="worker")
    assert config["task_default_queue_type"] == "quorum"
    assert config["broker_transport_options"]["confirm_publish"] is True
    assert config["beat_scheduler"] == "redbeat.RedBeatScheduler"
    assert config["redbeat_redis_url"] == app_env["REDIS_URL"]


def test_beats_scale_on_redbeat_without_a_schedule_file() -> None:
    beat = SERVICES["beat"]
    assert beat["command"] == ["celery", "-A", "worker", "beat", "--loglevel=INFO"]
    assert "container_name" not in beat  # `--scale beat=2` names each replica itself
    assert COMPOSE["x-app"]["environment"]["REDIS_URL"]  # redbeat's lock lives there
    procfile = (ROOT / "Procfile").read_text()
    # `make run` may be embedded (no Redis): the file scheduler's file under the instance dir.
    assert re.search(r"^beat: exec \.venv/bin/celery -A worker beat .*--schedule ", procfile, re.M)


def test_production_secrets_are_required_not_defaulted() -> None:
    environment = SERVICES["web"]["environment"]
    for secret in ("SECRET_KEY", "JWT_SECRET_KEY"):
        assert ":?" in environment[secret], f"{secret} must be required (${{VAR:?...}})"
    assert environment["APP_ENV"] == "production"


def dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions, split into stages at each FROM."""
    stages: list[list[str]] = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def test_dockerfile_is_multi_stage_slim_and_non_root() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "a build stage and a runtime stage"
    for stage in stages:
        assert "-slim" in stage[0], f"not a slim base: {stage[0]}"
    runtime = stages[-1]
    assert any(line.startswith("COPY --from=") for line in runtime), "runtime copies the build"
    assert not any("gcc" in line or "build-essential" in line for line in runtime)
    users = [line.split()[1] for line in runtime if line.upper().startswith("USER ")]
    assert users, "the runtime stage names its user"
    assert users[-1] not in ("root", "0"), "the runtime stage runs as a non-root user"
    # Everything the compose commands need is copied into the image.
    copied = " ".join(line for line in runtime if line.upper().startswith("COPY"))
    for needed in ("wsgi.py", "gunicorn.conf.py", "app", "worker", "migrations"):
        assert needed in copied, f"the image lacks {needed}"
        assert (ROOT / needed).exists()
    # The build installs exactly uv.lock's runtime pins, and the extra that brings Flower (which
    # runs from the same image); never the dev group.
    assert any(line.startswith("COPY") and "uv.lock" in line for line in stages[0])
    syncs = [line for line in stages[0] if line.startswith("RUN uv sync")]
    assert syncs, "the build installs with uv sync"
    for sync in syncs:
        for flag in ("--locked", "--no-dev", "--extra monitoring"):
            assert flag in sync, sync
    assert any("UV_COMPILE_BYTECODE=1" in line for line in stages[0]), "byte-compiled at build"
    cmd = next(line for line in runtime if line.upper().startswith("CMD"))
    assert '"gunicorn", "wsgi:app", "-c", "gunicorn.conf.py"' in cmd
    assert SERVICES["web"]["command"] == ["gunicorn", "wsgi:app", "-c", "gunicorn.conf.py"]


def test_flower_service_is_password_protected_and_not_published() -> None:
    flower = SERVICES["flower"]
    assert flower["command"][:4] == ["celery", "-A", "worker", "flower"]
    assert ":?" in flower["environment"]["FLOWER_BASIC_AUTH"]
    assert "ports" not in flower
    assert "--port=5555" in flower["command"]


def test_metrics_directories_are_wired_as_the_code_expects() -> None:
    """The web merges the workers' metric files (CELERY_METRICS_DIR) through a shared volume;
    each side empties its own PROMETHEUS_MULTIPROC_DIR at start, so the two must differ."""
    web, worker = SERVICES["web"], SERVICES["worker"]
    worker_dir = worker["environment"]["PROMETHEUS_MULTIPROC_DIR"]
    assert web["environment"]["CELERY_METRICS_DIR"] == worker_dir
    assert web["environment"]["PROMETHEUS_MULTIPROC_DIR"] != worker_dir
    assert "PROMETHEUS_MULTIPROC_DIR" not in COMPOSE["x-app"]["environment"]

    def volume_at(service: dict, path: str) -> str:
        return next(v.split(":")[0] for v in service["volumes"] if v.split(":")[1] == path)

    assert volume_at(web, worker_dir) == volume_at(worker, worker_dir) == "celery-metrics"
    assert "celery-metrics" in COMPOSE["volumes"]
    assert f"mkdir -p {worker_dir}" in (ROOT / "Dockerfile").read_text()


def test_the_relay_runs_as_in_the_procfile_with_its_counters_merged_by_the_web() -> None:
    from app.cli.outbox import outbox_cli

    relay = SERVICES["relay"]
    assert relay["command"] == ["flask", "--app", "wsgi", "outbox", "relay"]
    assert "relay" in outbox_cli.commands
    procfile = (ROOT / "Procfile").read_text()
    assert re.search(r"^relay: .*exec \.venv/bin/flask --app wsgi outbox relay$", procfile, re.M)
    # Its metric files go under the directory the web merges (searched recursively).
    web_merges = SERVICES["web"]["environment"]["CELERY_METRICS_DIR"]
    assert relay["environment"]["PROMETHEUS_MULTIPROC_DIR"].startswith(web_merges + "/")
    assert f"celery-metrics:{web_merges}" in relay["volumes"]
    assert relay["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_the_webhooks_worker_consumes_the_webhooks_queue_on_threads() -> None:
    """As in the Procfile: its own queue (the default worker leaves it alone), a thread pool, and
    its task metrics merged by the web like the other workers'."""
    from app.core.tasks import celery_config
    from app.settings import Settings

    command = SERVICES["webhooks"]["command"]
    assert command[:3] == ["nice", "-n", "10"]  # the request path first on a shared host
    assert command[3:7] == ["celery", "-A", "worker", "worker"]
    assert command[command.index("-Q") + 1] == Settings.from_env("testing").webhooks_queue
    assert command[command.index("-P") + 1] == "threads"
    config = celery_config(Settings.from_env("testing").to_flask_config())
    assert "webhooks" not in {queue.name for queue in config["task_queues"]}
    assert config["task_routes"]["webhooks.*"] == {"queue": "webhooks"}
    web_merges = SERVICES["web"]["environment"]["CELERY_METRICS_DIR"]
    assert SERVICES["webhooks"]["environment"]["PROMETHEUS_MULTIPROC_DIR"] == web_merges
    procfile = (ROOT / "Procfile").read_text()
    assert re.search(
        r"^webhooks: .*exec nice -n 10 .*celery -A worker worker .*-P threads", procfile, re.M
    )


def test_dockerignore_keeps_secrets_and_dev_files_out_but_not_what_the_image_copies() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for unwanted in (".venv", ".tools", "instance", ".env", ".git", "tests", "**/__pycache__"):
        assert unwanted in patterns, f".dockerignore lets {unwanted} into the build context"
    copied = [
        source
        for stage in dockerfile_stages()
        for line in stage
        if line.startswith("COPY") and "--from=" not in line
        for source in [word for word in line.split()[1:-1] if not word.startswith("--")]
    ]
    assert {"uv.lock", "app", "migrations", "wsgi.py"} <= set(copied)
    for source in copied:
        for pattern in patterns:
            if "*" in pattern:
                continue  # the globs name caches inside directories, never a copied path
            ignored = source == pattern or source.startswith(f"{pattern}/")
            assert not ignored, f"the Dockerfile copies {source}, which .dockerignore drops"


def test_the_tracing_profile_is_optional_and_wired_to_every_traced_process() -> None:
    """`docker compose --profile tracing up` adds a collector forwarding to Jaeger (its UI on
    loopback only); without the profile nothing depends on them and export stays off."""
    for name in TRACING_PROFILE:
        assert SERVICES[name]["profiles"] == ["tracing"]
    for name, service in SERVICES.items():
        if name not in TRACING_PROFILE:
            assert "profiles" not in service, f"{name} must run without a profile"
            assert not set(TRACING_PROFILE) & set(service.get("depends_on") or {}), name
    assert SERVICES["jaeger"]["ports"] == ["127.0.0.1:16686:16686"]
    assert "ports" not in SERVICES["otel-collector"]  # reached inside the compose network only
    mount = next(v for v in SERVICES["otel-collector"]["volumes"] if "collector.yaml" in v)
    source, target = mount.split(":")[:2]
    assert f"--config={target}" in SERVICES["otel-collector"]["command"]
    config = yaml.safe_load((ROOT / source).read_text())
    assert source == "./deploy/otel/collector.yaml"
    pipeline = config["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"]
    assert "http" in config["receivers"]["otlp"]["protocols"]
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    (exporter,) = pipeline["exporters"]
    assert config["exporters"][exporter]["endpoint"].split(":")[0] == "jaeger"
    for name in TRACED:
        environment = SERVICES[name]["environment"]
        assert environment["OTEL_EXPORTER_OTLP_ENDPOINT"] == "${OTEL_EXPORTER_OTLP_ENDPOINT:-}"
        assert environment["OTEL_SERVICE_NAME"] == f"postboard-{name}"


def test_the_stateless_services_scale_with_compose_scale() -> None:
    """`docker compose up --scale web=3 ...` (docs/scaling.md): a service with a fixed container
    name or a published host port could run only once."""
    for name in ("web", "worker", "webhooks", "relay", "beat"):
        service = SERVICES[name]
        assert "container_name" not in service, name
        assert not service.get("ports"), f"{name} publishes a port: a second copy could not bind it"
