"""Rendered kustomize output, and each llmesh container's settings as its service would
load them: the container's env (ConfigMaps via envFrom, the downward API faked) and its
mounted Secrets/ConfigMaps written to a temporary directory, read by the service's own
settings class through ``load_settings``."""

from __future__ import annotations

import base64
import contextlib
import importlib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from deploytest.tools import K8S
from llmesh.kernel.config import ServiceSettings, load_settings

# service (the `llmesh serve` name) -> its settings class.
SETTINGS: dict[str, str] = {
    "gateway": "llmesh_gateway.settings:GatewaySettings",
    "registry": "llmesh_registry.settings:RegistrySettings",
    "registrar": "llmesh_registry.settings:RegistrarSettings",
    "memory": "llmesh_memory.settings:MemorySettings",
    "inference": "llmesh_inference.settings:InferenceSettings",
    "openai": "llmesh_openai.settings:OpenAISettings",
}
# The Secrets an operator creates for production (documented examples).
EXAMPLE_SECRETS = K8S / "overlays" / "production" / "secrets.example"
FAKE_FIELDS = {"metadata.name": "llmesh-inference-7d9f-abcde", "status.podIP": "10.1.2.3"}
FAKE_PEM = (
    "-----BEGIN FAKE-----\nnot a real key, only for settings validation\n-----END FAKE-----\n"
)


@dataclass(frozen=True)
class Rendered:
    """One overlay's objects."""

    overlay: str
    objects: tuple[dict[str, Any], ...]

    @classmethod
    def parse(cls, overlay: str, text: str) -> Rendered:
        return cls(overlay, tuple(d for d in yaml.safe_load_all(text) if d))

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.overlay}: expected one {kind} {name}, found {len(found)}"
        return found[0]

    def find(self, kind: str, name: str) -> dict[str, Any] | None:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        return found[0] if found else None

    def workloads(self) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] in ("Deployment", "StatefulSet")]

    def secret_data(self, name: str) -> dict[str, str] | None:
        secret = self.find("Secret", name)
        if secret is None:
            return None
        data = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
        data.update(secret.get("stringData", {}))
        return data


def pod_spec(workload: Mapping[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def all_containers(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def service_of(container: Mapping[str, Any]) -> str | None:
    """The llmesh service a container runs (`serve X` args, else the image's default)."""
    args = container.get("args") or []
    if args[:1] == ["serve"]:
        return str(args[1])
    if args:
        return None  # another llmesh command (e.g. an init container's `models ...`)
    name = str(container["name"])
    return name if name in SETTINGS else None


def settings_class(service: str) -> type[ServiceSettings]:
    module, _, name = SETTINGS[service].partition(":")
    cls: type[ServiceSettings] = getattr(importlib.import_module(module), name)
    return cls


def _expand(value: str, env: Mapping[str, str]) -> str:
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def container_env(rendered: Rendered, container: Mapping[str, Any]) -> dict[str, str]:
    """The environment Kubernetes would give ``container`` (downward API faked)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, f"envFrom other than a ConfigMap: {source}"
        env.update(rendered.get("ConfigMap", source["configMapRef"]["name"]).get("data", {}))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = _expand(str(item["value"]), env)
        else:
            ref = item["valueFrom"]
            assert "fieldRef" in ref, f"env {item['name']}: only the downward API, got {ref}"
            env[item["name"]] = FAKE_FIELDS[ref["fieldRef"]["fieldPath"]]
    return env


def secret_files(rendered: Rendered, name: str) -> dict[str, str]:
    """What a mounted Secret holds: rendered (dev), a documented example (production
    settings, the metrics token), or a cert-manager Certificate's output (fake PEMs)."""
    data = rendered.secret_data(name)
    if data is not None:
        return data
    example = EXAMPLE_SECRETS / f"{name.removeprefix('llmesh-').removesuffix('-config')}.yaml"
    if name.endswith("-config") and example.is_file():
        return {"config.yaml": example.read_text()}
    token = EXAMPLE_SECRETS / name.removeprefix("llmesh-")
    if name.endswith("-token") and token.is_file():  # the example's last line is the value
        return {"token": token.read_text().strip().splitlines()[-1]}
    certificates = [c for c in rendered.of_kind("Certificate") if c["spec"]["secretName"] == name]
    assert certificates, f"{rendered.overlay}: Secret {name} is mounted but nothing makes it"
    return {"tls.crt": FAKE_PEM, "tls.key": FAKE_PEM, "ca.crt": FAKE_PEM}


def materialize(
    rendered: Rendered, spec: Mapping[str, Any], container: Mapping[str, Any], root: Path
) -> dict[str, Path]:
    """Write the container's Secret and ConfigMap mounts under ``root``; mountPath -> dir."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "secret" in volume:
            files = secret_files(rendered, volume["secret"]["secretName"])
        elif "configMap" in volume:
            data = rendered.get("ConfigMap", volume["configMap"]["name"]).get("data", {})
            items = volume["configMap"].get("items")
            files = {i["path"]: data[i["key"]] for i in items} if items else dict(data)
        else:
            continue
        target = root / container["name"] / mount["name"]
        target.mkdir(parents=True, exist_ok=True)
        for file_name, content in files.items():
            (target / file_name).write_text(content)
        mounts[mount["mountPath"]] = target
    for target in mounts.values():  # paths inside mounted settings files, too
        for file in target.iterdir():
            file.write_text(_relocate(file.read_text(), mounts))
    return mounts


def _relocate(value: str, mounts: Mapping[str, Path]) -> str:
    for mount_path in sorted(mounts, key=len, reverse=True):
        value = value.replace(mount_path + "/", f"{mounts[mount_path]}/")
    return value


@contextlib.contextmanager
def _environ(env: Mapping[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    for key in [k for k in os.environ if k.startswith("LLMESH_")]:
        del os.environ[key]
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@dataclass(frozen=True)
class LoadedContainer:
    """One llmesh container of a rendered workload and its loaded settings."""

    workload: dict[str, Any]
    container: dict[str, Any]
    service: str
    settings: Any
    env: dict[str, str]


def load_container(
    rendered: Rendered, workload: dict[str, Any], container: dict[str, Any], root: Path
) -> LoadedContainer:
    """Load ``container``'s settings exactly as ``llmesh serve <service>`` would."""
    service = service_of(container)
    assert service is not None, f"{container['name']} runs no llmesh service"
    spec = pod_spec(workload)
    mounts = materialize(rendered, spec, container, root)
    env = {k: _relocate(v, mounts) for k, v in container_env(rendered, container).items()}
    with _environ(env):
        settings = load_settings(settings_class(service))
    return LoadedContainer(workload, container, service, settings, env)


def llmesh_containers(rendered: Rendered, root: Path) -> list[LoadedContainer]:
    out = []
    for workload in rendered.workloads():
        for container in pod_spec(workload)["containers"]:
            if service_of(container) is not None:
                out.append(load_container(rendered, workload, container, root))
    return out
