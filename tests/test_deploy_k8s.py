"""deploy/k8s: what schemas cannot check. Every overlay is rendered with kustomize and
each llmesh container's settings are loaded by the service's own settings class from
the container's env and mounted files; probes, ports, addresses, TLS and grace periods
are compared with those settings."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploytest.manifests import (
    LoadedContainer,
    Rendered,
    all_containers,
    llmesh_containers,
    pod_spec,
)
from deploytest.tools import K8S, OVERLAYS, ROOT, generate_dev_secrets, render, run, tool

# Who calls whom inside the namespace (NetworkPolicy `from`): callee -> caller pods.
CALLERS = {
    "llmesh-registry": {"llmesh-gateway", "llmesh-memory", "llmesh-inference"},
    "llmesh-memory": {"llmesh-gateway"},
    "llmesh-inference": {"llmesh-gateway", "llmesh-memory"},
}
PUBLIC = {"llmesh-gateway", "llmesh-openai"}
# Services that are public doors: TLS without client certificates (API keys/JWT instead).
NO_CLIENT_CERTS = {"gateway", "openai"}


@pytest.fixture(scope="module")
def rendered() -> dict[str, Rendered]:
    return {overlay: Rendered.parse(overlay, render(overlay)) for overlay in OVERLAYS}


@pytest.fixture(scope="module")
def loaded(
    rendered: dict[str, Rendered], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[LoadedContainer]]:
    return {
        overlay: llmesh_containers(r, tmp_path_factory.mktemp(overlay))
        for overlay, r in rendered.items()
    }


def _each(rendered: dict[str, Rendered]) -> Iterator[tuple[str, Rendered, dict[str, Any]]]:
    for overlay, r in rendered.items():
        for workload in r.workloads():
            yield overlay, r, workload


def _labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_every_llmesh_service_runs_in_every_overlay(
    loaded: dict[str, list[LoadedContainer]],
) -> None:
    for overlay, containers in loaded.items():
        services = sorted(c.service for c in containers)
        assert services == sorted(
            ["gateway", "registry", "registrar", "memory", "inference", "openai"]
        ), overlay


def test_probes_ports_and_binds_follow_each_services_settings(
    loaded: dict[str, list[LoadedContainer]],
) -> None:
    for overlay, containers in loaded.items():
        for c in containers:
            s, where = c.settings, f"{overlay}/{c.container['name']}"
            ports = {p["containerPort"] for p in c.container["ports"]}
            assert s.host == "0.0.0.0", where
            assert s.metrics_host == "0.0.0.0", where
            assert {s.port, s.metrics_port} <= ports, where
            if c.service == "openai":  # HTTP health on its own port
                for probe, path in (
                    ("livenessProbe", "/health/live"),
                    ("readinessProbe", "/health"),
                ):
                    get = c.container[probe]["httpGet"]
                    assert (get["port"], get["path"]) == (s.port, path), where
                    assert get["scheme"] == ("HTTPS" if s.tls.enabled else "HTTP"), where
                continue
            # Native gRPC probes on the plaintext health port (kubelet cannot do TLS).
            assert s.health_port in ports, where
            probes = {"livenessProbe": "liveness", "readinessProbe": "readiness"}
            if c.service == "inference":
                probes["startupProbe"] = "liveness"
            for probe, name in probes.items():
                grpc = c.container[probe]["grpc"]
                assert grpc == {"port": s.health_port, "service": name}, f"{where} {probe}"


def test_prometheus_annotations_name_the_metrics_port(
    loaded: dict[str, list[LoadedContainer]],
) -> None:
    for overlay, containers in loaded.items():
        for c in containers:
            if c.service == "registrar":
                continue  # the pod's annotation names the worker; the scrape job keeps both
            notes = c.workload["spec"]["template"]["metadata"]["annotations"]
            assert notes["prometheus.io/scrape"] == "true", overlay
            assert int(notes["prometheus.io/port"]) == c.settings.metrics_port, overlay
            names = {p["name"] for p in c.container["ports"]}
            assert names & {"metrics", "registrar-mtrc"}, overlay


def test_metrics_are_exposed_only_behind_the_token_prometheus_sends(
    rendered: dict[str, Rendered], loaded: dict[str, list[LoadedContainer]]
) -> None:
    for overlay, containers in loaded.items():
        r = rendered[overlay]
        scrape = yaml.safe_load(
            r.get("ConfigMap", _generated(r, "llmesh-prometheus-scrape"))["data"][
                "scrape-config.yaml"
            ]
        )
        (job,) = scrape["scrape_configs"]
        auth = job["authorization"]
        assert auth["type"] == "Bearer", overlay
        assert auth["credentials_file"].endswith("/llmesh-metrics-token/token"), overlay
        tokens = set()
        for c in containers:
            where = f"{overlay}/{c.container['name']}"
            # Exposed on 0.0.0.0 (tested above), so the token is required: the settings
            # class refuses an exposed endpoint without one.
            token_file = c.settings.metrics_token_file
            assert token_file is not None and token_file.read_text().strip(), where
            volumes = {v["name"]: v for v in pod_spec(c.workload)["volumes"]}
            # Mounts are materialised as <tmp>/<container>/<volume name>/ (deploytest).
            (mount,) = [
                m for m in c.container["volumeMounts"] if m["name"] == token_file.parent.name
            ]
            assert mount.get("readOnly") is True, where
            assert volumes[mount["name"]]["secret"]["secretName"] == "llmesh-metrics-token", where
            tokens.add(token_file.read_text().strip())
        assert len(tokens) == 1, f"{overlay}: every service checks the same token"


def _generated(r: Rendered, name: str) -> str:
    """The rendered name of a ConfigMap (generated ones carry a hash suffix)."""
    names = [
        c["metadata"]["name"]
        for c in r.of_kind("ConfigMap")
        if c["metadata"]["name"] == name or c["metadata"]["name"].startswith(name + "-")
    ]
    assert len(names) == 1, f"{r.overlay}: {name}: {names}"
    return names[0]


def test_termination_grace_covers_prestop_and_drain(
    loaded: dict[str, list[LoadedContainer]],
) -> None:
    for overlay, containers in loaded.items():
        for c in containers:
            spec = pod_spec(c.workload)
            pre_stop = c.container["lifecycle"]["preStop"]["sleep"]["seconds"]
            needed = c.settings.grace_period_s + pre_stop
            assert spec["terminationGracePeriodSeconds"] >= needed, (
                f"{overlay}/{c.container['name']}: {spec['terminationGracePeriodSeconds']}s "
                f"< preStop {pre_stop}s + grace_period_s {c.settings.grace_period_s}s"
            )


def _service_port(r: Rendered, address: str) -> tuple[dict[str, Any], int]:
    host, _, port = address.rpartition(":")
    service = r.get("Service", host)
    matches = [p for p in service["spec"]["ports"] if p["port"] == int(port)]
    assert matches, f"{r.overlay}: Service {host} has no port {port}"
    return service, matches[0]["targetPort"]


def test_addresses_reach_the_service_that_serves_them(
    rendered: dict[str, Rendered], loaded: dict[str, list[LoadedContainer]]
) -> None:
    for overlay, containers in loaded.items():
        r = rendered[overlay]
        by_service = {c.service: c for c in containers}
        calls = {
            ("gateway", "registry_address"): "registry",
            ("gateway", "memory_address"): "memory",
            ("memory", "embedder_registry"): "registry",
            ("registrar", "registry"): "registry",
            ("openai", "gateway_address"): "gateway",
        }
        for (caller, field), callee in calls.items():
            address = getattr(by_service[caller].settings, field)
            service, target = _service_port(r, address)
            served = by_service[callee]
            pod_labels = served.workload["spec"]["template"]["metadata"]["labels"]
            assert _labels_match(service["spec"]["selector"], pod_labels), (overlay, field)
            named = {p["name"]: p["containerPort"] for p in served.container["ports"]}
            assert named.get(target, target) == served.settings.port, (overlay, field)
        # The registrar talks to its worker over localhost and advertises the pod IP.
        registrar, worker = by_service["registrar"].settings, by_service["inference"].settings
        assert registrar.worker == f"127.0.0.1:{worker.port}", overlay
        assert registrar.advertise_address == f"10.1.2.3:{worker.port}", overlay
        assert registrar.worker_id == "llmesh-inference-7d9f-abcde", overlay
        assert by_service["registrar"].workload is by_service["inference"].workload


def test_dev_is_plaintext_and_production_is_mtls(
    rendered: dict[str, Rendered], loaded: dict[str, list[LoadedContainer]]
) -> None:
    for c in loaded["dev"]:
        assert c.settings.allow_plaintext and not c.settings.tls.enabled, c.service
    for overlay in ("production", "production-cuda"):
        r = rendered[overlay]
        certificates = {x["spec"]["secretName"]: x for x in r.of_kind("Certificate")}
        for c in loaded[overlay]:
            s = c.settings
            assert not s.allow_plaintext and s.tls.enabled, c.service
            assert (s.tls.client_ca_file is None) == (c.service in NO_CLIENT_CERTS), c.service
            if c.service in {"gateway", "memory", "registrar", "openai"}:  # callers
                assert s.client_tls.enabled and s.client_tls.cert_file, c.service
            # The name callers verify is on every certificate a caller may meet.
            if s.client_tls.server_name_override:
                for secret, certificate in certificates.items():
                    if secret in {"llmesh-ca", "llmesh-openai-tls"}:
                        continue
                    assert s.client_tls.server_name_override in certificate["spec"]["dnsNames"]
        issuers = {i["metadata"]["name"] for i in r.of_kind("Issuer")}
        for certificate in certificates.values():
            assert certificate["spec"]["issuerRef"]["name"] in issuers


def test_production_shares_state_and_scales(
    rendered: dict[str, Rendered], loaded: dict[str, list[LoadedContainer]]
) -> None:
    for overlay in ("production", "production-cuda"):
        r = rendered[overlay]
        settings = {c.service: c.settings for c in loaded[overlay]}
        assert settings["gateway"].rate_limit.backend == "redis"
        assert settings["gateway"].store_url.startswith("postgresql://")
        assert settings["registry"].backend == "redis"
        assert settings["memory"].store == "postgres" and settings["memory"].redis_url
        hpa = r.get("HorizontalPodAutoscaler", "llmesh-gateway")
        assert hpa["spec"]["scaleTargetRef"]["name"] == "llmesh-gateway"
        assert hpa["spec"]["minReplicas"] >= 2
        assert "replicas" not in r.get("Deployment", "llmesh-gateway")["spec"]  # HPA owns it
        for workload in r.of_kind("Deployment"):
            name = workload["metadata"]["name"]
            if name != "llmesh-gateway":
                assert workload["spec"]["replicas"] >= 2, name
            labels = workload["spec"]["template"]["metadata"]["labels"]
            budgets = [
                p
                for p in r.of_kind("PodDisruptionBudget")
                if _labels_match(p["spec"]["selector"]["matchLabels"], labels)
            ]
            assert len(budgets) == 1, f"{overlay}: {name} needs one PodDisruptionBudget"
        assert not r.of_kind("StatefulSet"), "production uses external Redis/PostgreSQL"


def test_dev_runs_redis_and_pgvector_in_cluster(
    rendered: dict[str, Rendered], loaded: dict[str, list[LoadedContainer]]
) -> None:
    r = rendered["dev"]
    images = {
        s["metadata"]["name"]: pod_spec(s)["containers"][0]["image"]
        for s in r.of_kind("StatefulSet")
    }
    assert images["llmesh-redis"].startswith("redis:")
    assert images["llmesh-postgres"].startswith("pgvector/pgvector:")
    settings = {c.service: c.settings for c in loaded["dev"]}
    assert settings["memory"].resolved_postgres_dsn().split("@")[1].startswith("llmesh-postgres:")
    assert settings["memory"].redis_url.startswith("redis://llmesh-redis:")
    # The generated password is the one the database is initialised with, in both DSNs.
    (postgres,) = [
        v["secret"]["secretName"]
        for v in pod_spec(r.get("StatefulSet", "llmesh-postgres"))["volumes"]
        if "secret" in v
    ]
    password = (r.secret_data(postgres) or {}).get("password", "")
    assert len(password) >= 32, postgres
    for dsn in (settings["memory"].resolved_postgres_dsn(), settings["gateway"].store_url):
        assert dsn.startswith(f"postgresql://llmesh:{password}@llmesh-postgres:")
    for workload in r.workloads():
        assert workload["spec"].get("replicas", 1) == 1


def test_dev_credentials_are_generated_random_kept_and_never_committed(
    tmp_path: Path,
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    generate_dev_secrets(first)
    generate_dev_secrets(second)
    made = {p.name: p.read_text() for p in first.iterdir()}
    assert set(made) == {
        "gateway.yaml",
        "memory.yaml",
        "registry.yaml",
        "postgres-password",
        "metrics-token",
    }
    for name in ("postgres-password", "metrics-token"):
        assert re.fullmatch(r"[0-9a-f]{64}", made[name]), name  # 32 random bytes, URL-safe
        assert made[name] != (second / name).read_text(), f"{name} is not random"
        assert (first / name).stat().st_mode & 0o077 == 0, f"{name} is readable by others"
    assert made["postgres-password"] != made["metrics-token"]
    # A second run keeps the values (the database took its password when first started).
    generate_dev_secrets(first)
    assert {p.name: p.read_text() for p in first.iterdir()} == made
    # The overlay's directory is git-ignored and nothing under it is tracked.
    dev_secrets = K8S / "overlays" / "dev" / "secrets"
    probe = dev_secrets / "postgres-password"
    ignored = run(["git", "-C", ROOT, "check-ignore", "-q", "--no-index", probe])
    assert ignored.returncode == 0, f"{dev_secrets} is not git-ignored"
    tracked = run(["git", "-C", ROOT, "ls-files", "--", dev_secrets])
    assert tracked.returncode == 0 and not tracked.stdout.strip(), tracked.stdout


def test_cuda_variant_puts_the_worker_on_a_gpu(
    rendered: dict[str, Rendered], loaded: dict[str, list[LoadedContainer]]
) -> None:
    (worker,) = [c for c in loaded["production-cuda"] if c.service == "inference"]
    assert worker.settings.device == "gpu" and not worker.settings.blas_preload
    assert "inference-cuda:" in worker.container["image"]
    assert worker.container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    (cpu,) = [c for c in loaded["production"] if c.service == "inference"]
    assert cpu.settings.device == "auto" and cpu.settings.blas_preload
    # The CPU worker's OpenBLAS threads match its CPU limit.
    assert cpu.settings.blas_threads == int(cpu.container["resources"]["limits"]["cpu"])


def test_selectors_match_labels(rendered: dict[str, Rendered]) -> None:
    for overlay, r in rendered.items():
        pods = [w["spec"]["template"]["metadata"]["labels"] for w in r.workloads()]
        for workload in r.workloads():
            selector = workload["spec"]["selector"]["matchLabels"]
            assert _labels_match(selector, workload["spec"]["template"]["metadata"]["labels"])
        for kind, path in (
            ("Service", ("spec", "selector")),
            ("PodDisruptionBudget", ("spec", "selector", "matchLabels")),
            ("NetworkPolicy", ("spec", "podSelector", "matchLabels")),
        ):
            for obj in r.of_kind(kind):
                selector = obj
                for key in path:
                    selector = selector.get(key, {})
                if kind == "NetworkPolicy" and not selector:
                    continue  # {} selects every pod (default deny)
                assert any(_labels_match(selector, labels) for labels in pods), (
                    f"{overlay}: {kind} {obj['metadata']['name']} selects no pod"
                )


def test_network_policies_open_only_the_doors(rendered: dict[str, Rendered]) -> None:
    for overlay, r in rendered.items():
        policies = r.of_kind("NetworkPolicy")
        assert any(
            p["spec"]["podSelector"] == {} and not p["spec"].get("ingress") for p in policies
        )
        for policy in policies:
            name = (
                policy["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name")
            )
            for rule in policy["spec"].get("ingress", []):
                sources = rule.get("from")
                if sources is None:
                    assert name in PUBLIC, f"{overlay}: {name} is open to everyone"
                    continue
                callers = {
                    s["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
                    for s in sources
                    if "podSelector" in s
                }
                if name in CALLERS:
                    assert callers == CALLERS[name], f"{overlay}: {name} from {callers}"


def test_containers_are_hardened(rendered: dict[str, Rendered]) -> None:
    for overlay, _r, workload in _each(rendered):
        spec = pod_spec(workload)
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for container in all_containers(spec):
            where = f"{overlay}/{workload['metadata']['name']}/{container['name']}"
            ctx = container["securityContext"]
            assert ctx["readOnlyRootFilesystem"] is True, where
            assert ctx["allowPrivilegeEscalation"] is False, where
            assert ctx["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in ctx["capabilities"], where
            assert ctx["seccompProfile"]["type"] == "RuntimeDefault", where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), where
            image = container["image"]
            name, _, tag = (
                image.rpartition("@")[0].rpartition(":") if "@" in image else image.rpartition(":")
            )
            assert name and tag and tag != "latest", f"{where}: image {image} needs a fixed tag"


def test_secrets_reach_processes_only_as_files(rendered: dict[str, Rendered]) -> None:
    for overlay, r, workload in _each(rendered):
        spec = pod_spec(workload)
        for container in all_containers(spec):
            for source in container.get("envFrom", []):
                assert "secretRef" not in source, f"{overlay}: secret as env in {container['name']}"
            for item in container.get("env", []):
                assert "secretKeyRef" not in item.get("valueFrom", {}), f"{overlay}: {item['name']}"
        mounted = {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
        for secret in mounted:
            assert r.find("Secret", secret) or secret.endswith(("-config", "-tls", "-token")), (
                secret
            )
    for overlay, r in rendered.items():  # every rendered Secret is mounted somewhere
        mounted = {
            v["secret"]["secretName"]
            for w in r.workloads()
            for v in pod_spec(w).get("volumes", [])
            if "secret" in v
        }
        for secret in r.of_kind("Secret"):
            assert secret["metadata"]["name"] in mounted, overlay


def test_writable_paths_are_volumes(loaded: dict[str, list[LoadedContainer]]) -> None:
    for overlay, containers in loaded.items():
        for c in containers:
            paths = {m["mountPath"] for m in c.container["volumeMounts"]}
            assert "/tmp" in paths, f"{overlay}/{c.container['name']}"
            assert str(c.settings.data_dir) in paths, f"{overlay}/{c.container['name']}"


def test_container_commands_exist_in_the_cli(rendered: dict[str, Rendered]) -> None:
    from llmesh_cli.main import SERVICES, build_parser

    parser = build_parser()
    for overlay, _r, workload in _each(rendered):
        for container in all_containers(pod_spec(workload)):
            if not container["image"].startswith("ghcr.io/llmesh/"):
                continue
            args = container.get("args", [])
            if args[:1] == ["serve"]:
                assert args[1] in SERVICES, f"{overlay}: unknown service {args[1]}"
            elif args:
                parser.parse_args(args)  # exits (fails) on an unknown command or flag


def test_dockerfile_images_are_the_ones_deployed(rendered: dict[str, Rendered]) -> None:
    root = Path(__file__).resolve().parents[1]
    for overlay, _r, workload in _each(rendered):
        for container in all_containers(pod_spec(workload)):
            image = container["image"]
            if not image.startswith("ghcr.io/llmesh/"):
                continue
            name = image.removeprefix("ghcr.io/llmesh/").partition(":")[0]
            dockerfile = (
                root / "services/inference/Dockerfile.cuda"
                if name == "inference-cuda"
                else root / "services" / name / "Dockerfile"
            )
            assert dockerfile.is_file(), f"{overlay}: {image} has no {dockerfile}"


def test_the_configure_example_of_the_deployment_doc_renders(tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "deployment.md").read_text()
    section = doc.split("## Configure", 1)[1]
    example = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert example is not None
    overlay = os.path.relpath(K8S / "overlays" / "production", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(f"resources: [{overlay}]\n" + example.group(1))
    result = run([tool("kubectl"), "kustomize", tmp_path])
    assert result.returncode == 0, result.stderr
    r = Rendered.parse("doc-example", result.stdout)
    (env,) = [
        c
        for c in r.of_kind("ConfigMap")
        if c["metadata"]["name"].startswith("llmesh-inference-env")
    ]
    assert env["data"]["LLMESH_INFERENCE_MAX_BATCH_SIZE"] == "32"
    assert env["data"]["LLMESH_INFERENCE_TLS__CERT_FILE"]  # merged into production's, not replaced
    (worker,) = [c for c in llmesh_containers(r, tmp_path / "mounts") if c.service == "inference"]
    assert worker.settings.max_batch_size == 32
    assert worker.settings.default_model == "smollm2-135m"
