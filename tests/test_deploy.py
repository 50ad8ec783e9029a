"""deploy/kubernetes/sweep.yaml stays a manifest that works with this code: the worker's command
composes with the project's configs, the storage URL comes by reference from the secret the proxy
reads too, and the proxy's Service, port and the workers' `storage_proxy` agree."""

from __future__ import annotations

from pathlib import Path

import yaml
from hydra import compose, initialize_config_dir

from src.sweep.storage_proxy import parse_address
from tests.conftest import ROOT

MANIFEST = ROOT / "deploy" / "kubernetes" / "sweep.yaml"


def _docs() -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_the_kubernetes_sweep_manifest_matches_the_code(tmp_path: Path) -> None:
    docs = _docs()
    assert set(docs) == {
        "Deployment/ftlab-storage-proxy",
        "Service/ftlab-storage-proxy",
        "Job/ftlab-sweep",
    }
    job = docs["Job/ftlab-sweep"]["spec"]["template"]["spec"]
    (worker,) = job["containers"]
    command, args = worker["command"], worker["args"]
    assert command[1:4] == ["-m", "src.train", "-m"], command
    overrides = [*command[4:], *args]

    # the URL by reference, from the secret, never in the manifest's arguments
    assert "hydra.sweeper.storage=env:FTLAB_STORAGE_URL" in overrides
    assert "secretKeyRef" in _env(worker)["FTLAB_STORAGE_URL"]["valueFrom"]
    assert not any("postgresql://" in o for o in overrides)

    # the workers' proxy address is the Service's, which forwards to the proxy's port
    (address,) = [
        o.split("=", 1)[1] for o in overrides if o.startswith("hydra.sweeper.storage_proxy=")
    ]
    host, port = parse_address(address)
    service = docs["Service/ftlab-storage-proxy"]
    assert host == service["metadata"]["name"]
    (service_port,) = service["spec"]["ports"]
    assert service_port["port"] == port
    proxy_pod = docs["Deployment/ftlab-storage-proxy"]["spec"]["template"]["spec"]
    (proxy,) = proxy_pod["containers"]
    assert proxy["command"][1:3] == ["-m", "src.sweep.storage_proxy"]
    assert proxy["command"][proxy["command"].index("--port") + 1] == str(service_port["targetPort"])
    assert proxy["command"][3] == "env:FTLAB_STORAGE_URL"
    assert (
        _env(proxy)["FTLAB_STORAGE_URL"]["valueFrom"]
        == _env(worker)["FTLAB_STORAGE_URL"]["valueFrom"]
    )
    proxy_labels = docs["Deployment/ftlab-storage-proxy"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"] == proxy_labels

    # every override is a key of the composed config (a typo would make every pod exit 2)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    assert cfg.hydra.sweeper.storage == "env:FTLAB_STORAGE_URL"
    assert cfg.hydra.sweeper.storage_proxy == address
    assert cfg.hydra.sweeper.n_trials == 64 and cfg.paths.data_dir == "/data"
    # the shared volume holds the sweep dir
    mounts = {m["mountPath"] for m in worker["volumeMounts"]}
    assert cfg.hydra.sweep.dir in mounts or any(cfg.hydra.sweep.dir.startswith(m) for m in mounts)
