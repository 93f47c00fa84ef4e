"""Validates docker-compose.yml without Docker (no engine runs here): it must parse, have the
production topology, and set only variables the service reads (those in .env.example)."""

import re
import sys
from pathlib import Path

import yaml

root = Path(__file__).resolve().parent.parent
compose = yaml.safe_load((root / "docker-compose.yml").read_text())
documented = {
    m.group(1)
    for m in re.finditer(r"^([A-Z][A-Z0-9_]*)=", (root / ".env.example").read_text(), re.M)
}
errors = []
services = compose.get("services", {})

for name in ("mongo1", "mongo2", "mongo3", "mongo-init", "redis", "proxy"):
    if name not in services:
        errors.append(f"service {name} is missing")
for name in ("mongo1", "mongo2", "mongo3"):
    if "--replSet" not in services.get(name, {}).get("command", []):
        errors.append(f"{name} is not started as a replica set member")

apis = [n for n, s in services.items() if s.get("image") == "chat-server:latest"]
if len(apis) < 2:
    errors.append(f"want at least two API instances of the chat-server image, got {apis}")
if not any(services[n].get("build") for n in apis):
    errors.append("no API service builds the image from the Dockerfile")
for name in apis:
    env = services[name].get("environment", {})
    for var in env:
        if var not in documented:
            errors.append(f"{name} sets {var}, which the service does not read")
    for var in ("MONGODB_URI", "REDIS_URL", "JWT_SECRET", "LISTEN_ADDR"):
        if var not in env:
            errors.append(f"{name} does not set {var}")
    uri = str(env.get("MONGODB_URI", ""))
    if "replicaSet=" not in uri:
        errors.append(f"{name} does not connect to the replica set")
    # The driver settings the fault tests prove (docs/fault-tolerance.md) come from the code;
    # the URI must not turn them off.
    for option in ("directConnection", "w=", "journal", "retryWrites", "retryReads",
                   "readPreference", "readConcernLevel", "heartbeatFrequencyMS"):
        if option.lower() in uri.lower():
            errors.append(f"{name}'s MONGODB_URI overrides {option.rstrip('=')}, which the fault tests prove")
    deps = services[name].get("depends_on", {})
    if deps.get("mongo-init", {}).get("condition") != "service_completed_successfully":
        errors.append(f"{name} does not wait for the replica set to be initiated")

for path in re.findall(r"\./([\w./-]+):", (root / "docker-compose.yml").read_text()):
    if not (root / path).exists():
        errors.append(f"docker-compose.yml mounts ./{path}, which does not exist")
if "proxy_buffering off" not in (root / "deploy/nginx.conf").read_text():
    errors.append("the proxy must not buffer (SSE)")

if errors:
    print("docker-compose.yml: " + "; ".join(errors), file=sys.stderr)
    sys.exit(1)
print(f"docker-compose.yml: ok ({len(services)} services, API instances: {', '.join(apis)})")
