"""A strict local Azure Resource Manager over TLS, for the azure provider's tests.

    arm = ArmServer.start(tmp_path, token="t0k", subscription="0000…")
    arm.url, arm.ca_path          # base_url for the azure-mgmt clients; CA for REQUESTS_CA_BUNDLE
    arm.fail_type["microsoft.compute/virtualmachines"] = ("AllocationFailed", "no capacity")
    arm.resources                 # {lower-case id: stored resource}, what the "cloud" holds
    arm.stop()

It refuses what real ARM refuses and what a sloppy client would get wrong: a missing or wrong
bearer token (401), a missing or malformed ``api-version`` (400), PUT bodies whose settings
are not inside a ``properties`` envelope or whose keys are not camelCase, references to
resources that do not exist, and deleting a resource another one still uses. PUTs of network
and compute resources are long-running operations (201 + ``Azure-AsyncOperation``, polled
until Succeeded or Failed); DELETEs answer 202 + ``Location``. Only the resource types the
provider uses are known.
"""

from __future__ import annotations

import base64
import dataclasses
import http.server
import json
import re
import ssl
import threading
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cloudsim.addresses import DEFAULT_POOL, AddressPool

API_VERSION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")
CAMEL_RE = re.compile(r"^[a-z][A-Za-z0-9]*$")
TOP_LEVEL_KEYS = {"location", "tags", "properties", "sku", "zones", "identity", "plan", "name", "id",
                  "type", "etag", "extendedLocation", "managedBy"}
KNOWN_TYPES = {"microsoft.network/networksecuritygroups", "microsoft.network/virtualnetworks",
               "microsoft.network/publicipaddresses", "microsoft.network/networkinterfaces",
               "microsoft.compute/virtualmachines", "microsoft.compute/disks"}
IN_USE_CODES = {"microsoft.network/networkinterfaces": "NicInUse",
                "microsoft.network/publicipaddresses": "PublicIPAddressInUse",
                "microsoft.network/virtualnetworks": "InUseSubnetCannotBeDeleted",
                "microsoft.network/networksecuritygroups": "InUseNetworkSecurityGroupCannotBeDeleted"}
MAX_CUSTOM_DATA_CHARS = 87380      # base64 of Azure's 64 KiB custom data limit
POLLS_PER_OPERATION = 2            # "InProgress" answers before an operation ends

ARM_TOKEN = "arm-test-token-7f3c"
MANAGED_IDENTITY_PATH = "/msi/token"
ARM_SUBSCRIPTION = "00000000-1111-2222-3333-444444444444"


class FixedTokenCredential:
    """An azure-core TokenCredential that hands out one fixed bearer token (the ARM server's)."""

    def __init__(self, token: str = ARM_TOKEN) -> None:
        self.token = token
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes, **kwargs):
        import time
        from azure.core.credentials import AccessToken
        self.scopes.append(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)


class ArmError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


@dataclasses.dataclass
class Operation:
    id: str
    resource_id: str
    kind: str                         # put | delete | delete-group
    polls_left: int = POLLS_PER_OPERATION
    status: str = "InProgress"
    error: dict | None = None


def _check_camel(value, where: str) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            if not CAMEL_RE.match(key):
                raise ArmError(400, "InvalidRequestContent", f"{where}: '{key}' is not a camelCase property")
            _check_camel(inner, f"{where}.{key}")
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            _check_camel(inner, f"{where}[{i}]")


def _refs(value) -> list[str]:
    """Every resource id a body refers to (values of keys named ``id``)."""
    found = []
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "id" and isinstance(inner, str):
                found.append(inner.lower())
            else:
                found.extend(_refs(inner))
    elif isinstance(value, list):
        for inner in value:
            found.extend(_refs(inner))
    return found


def _need(props: dict, path: str, rtype: str):
    cur = props
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise ArmError(400, "InvalidParameter", f"{rtype}: properties.{path} is required")
        cur = cur[part]
    return cur


class ArmServer:
    def __init__(self, token: str, subscription: str, addresses: str | None = None) -> None:
        self.token, self.subscription = token, subscription
        self.groups: dict[str, dict] = {}
        self.resources: dict[str, dict] = {}
        self.operations: dict[str, Operation] = {}
        self.fail_type: dict[str, tuple[str, str]] = {}
        self.requests: list[tuple[str, str]] = []
        self.refusals: list[str] = []
        self.lock = threading.Lock()
        # 198.19.128.x by default: not what moto's EC2 hands out by default
        self._ips = AddressPool(addresses, first=1) if addresses else AddressPool(DEFAULT_POOL, first=1 << 15)
        self.identity_header = uuid.uuid4().hex      # the managed-identity endpoint's secret header
        self.httpd: http.server.ThreadingHTTPServer | None = None
        self.url = ""
        self.ca_path: Path | None = None

    # ------------------------------------------------------------------ life
    @classmethod
    def start(cls, workdir: Path, token: str, subscription: str, addresses: str | None = None) -> "ArmServer":
        import trustme
        server = cls(token, subscription, addresses)
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        server.ca_path = workdir / "arm-ca.pem"
        ca.cert_pem.write_to_path(str(server.ca_path))
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)
        handler = type("Handler", (_Handler,), {"arm": server})
        server.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.httpd.socket = ctx.wrap_socket(server.httpd.socket, server_side=True)
        server.url = f"https://127.0.0.1:{server.httpd.server_address[1]}"
        threading.Thread(target=server.httpd.serve_forever, daemon=True).start()
        return server

    @property
    def identity_env(self) -> dict[str, str]:
        """What makes DefaultAzureCredential fetch this server's token (managed identity)."""
        return {"IDENTITY_ENDPOINT": f"{self.url}{MANAGED_IDENTITY_PATH}", "IDENTITY_HEADER": self.identity_header}

    def stop(self) -> None:
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()

    def live(self) -> dict[str, dict]:
        """Resource groups and resources that exist, by lower-case id."""
        with self.lock:
            out = {f"/subscriptions/{self.subscription}/resourcegroups/{k}": v for k, v in self.groups.items()}
            out.update(self.resources)
            return out

    # ------------------------------------------------------------------ dispatch
    def handle(self, method: str, raw_path: str, headers, body: bytes) -> tuple[int, dict, dict | None]:
        parts = urlsplit(raw_path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.requests.append((method, parts.path))
        if parts.path == MANAGED_IDENTITY_PATH:
            return self._managed_identity(headers, query)
        auth = headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            raise ArmError(401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing.")
        if auth[len("Bearer "):] != self.token:
            raise ArmError(401, "InvalidAuthenticationToken", "The access token is invalid.")
        version = query.get("api-version")
        if not version:
            raise ArmError(400, "MissingApiVersionParameter", "The api-version query parameter (?api-version=) is required.")
        if not API_VERSION_RE.match(version):
            raise ArmError(400, "InvalidApiVersionParameter", f"The api-version '{version}' is invalid.")
        segs = [s for s in parts.path.split("/") if s]
        low = [s.lower() for s in segs]
        if len(low) < 2 or low[0] != "subscriptions":
            raise ArmError(404, "InvalidResourceType", f"No route for {parts.path}")
        if low[1] != self.subscription.lower():
            raise ArmError(404, "SubscriptionNotFound", f"The subscription '{segs[1]}' could not be found.")
        rest, rest_low = segs[2:], low[2:]
        with self.lock:
            if rest_low[:1] == ["providers"] and len(rest_low) == 6 and rest_low[2] == "locations":
                return self._operation(rest[1], rest_low[4], rest[5], version)
            if rest_low[:1] == ["providers"] and len(rest_low) == 3 and method == "GET":
                rtype = f"{rest_low[1]}/{rest_low[2]}"
                return 200, {}, {"value": [self._view(r, query) for r in self.resources.values()
                                           if r["type"].lower() == rtype]}
            if rest_low[:1] != ["resourcegroups"]:
                raise ArmError(404, "InvalidResourceType", f"No route for {parts.path}")
            if len(rest) == 1 and method == "GET":
                return 200, {}, {"value": list(self.groups.values())}
            group = rest_low[1]
            if len(rest) == 2:
                return self._group(method, segs[3], group, body, version)
            if group not in self.groups:
                raise ArmError(404, "ResourceGroupNotFound", f"Resource group '{segs[3]}' could not be found.")
            if len(rest) != 6 or rest_low[2] != "providers":
                raise ArmError(404, "InvalidResourceType", f"No route for {parts.path}")
            rtype = f"{rest_low[3]}/{rest_low[4]}"
            if rtype not in KNOWN_TYPES:
                raise ArmError(404, "InvalidResourceType", f"The resource type '{rtype}' is not known here.")
            rid = "/" + "/".join(segs)
            if method == "PUT":
                return self._put(rid, rest[3] + "/" + rest[4], rest[5], rtype, body, version)
            if method == "GET":
                found = self.resources.get(rid.lower())
                if not found:
                    raise ArmError(404, "ResourceNotFound", f"The Resource '{rest[3]}/{rest[4]}/{rest[5]}' "
                                                            f"under resource group '{segs[3]}' was not found.")
                return 200, {}, self._view(found, query)
            if method == "DELETE":
                return self._delete(rid.lower(), rtype, version)
        raise ArmError(405, "MethodNotAllowed", f"{method} is not supported here")

    # ------------------------------------------------------------------ managed identity
    def _managed_identity(self, headers, query: dict):
        """Azure's App Service managed-identity endpoint: the VM-side way to get ARM's token
        (what DefaultAzureCredential finds through IDENTITY_ENDPOINT / IDENTITY_HEADER)."""
        if headers.get("X-IDENTITY-HEADER") != self.identity_header:
            raise ArmError(401, "AuthenticationFailed", "X-IDENTITY-HEADER is missing or wrong.")
        import time
        return 200, {}, {"access_token": self.token, "expires_on": str(int(time.time()) + 3600),
                         "resource": query.get("resource", ""), "token_type": "Bearer"}

    # ------------------------------------------------------------------ resource groups
    def _group(self, method: str, name: str, key: str, body: bytes, version: str):
        rid = f"/subscriptions/{self.subscription}/resourceGroups/{name}"
        if method == "HEAD":
            return (204 if key in self.groups else 404), {}, None
        if method == "GET":
            if key not in self.groups:
                raise ArmError(404, "ResourceGroupNotFound", f"Resource group '{name}' could not be found.")
            return 200, {}, self.groups[key]
        if method == "PUT":
            doc = self._body(body, rid)
            existed = key in self.groups
            self.groups[key] = {"id": rid, "name": name, "type": "Microsoft.Resources/resourceGroups",
                                "location": doc["location"], "tags": doc.get("tags") or {},
                                "properties": {"provisioningState": "Succeeded"}}
            return (200 if existed else 201), {}, self.groups[key]
        if method == "DELETE":
            if key not in self.groups:
                raise ArmError(404, "ResourceGroupNotFound", f"Resource group '{name}' could not be found.")
            op = self._new_op(rid.lower(), "delete-group")
            return 202, self._op_headers(op, "Microsoft.Resources", version, location=True), None
        raise ArmError(405, "MethodNotAllowed", method)

    # ------------------------------------------------------------------ resources
    def _body(self, body: bytes, rid: str) -> dict:
        try:
            doc = json.loads(body or b"null")
        except ValueError:
            raise ArmError(400, "InvalidRequestContent", f"{rid}: the body is not JSON") from None
        if not isinstance(doc, dict):
            raise ArmError(400, "InvalidRequestContent", f"{rid}: the body must be a JSON object")
        stray = set(doc) - TOP_LEVEL_KEYS
        if stray:
            raise ArmError(400, "InvalidRequestContent",
                           f"{rid}: {sorted(stray)} belong inside the 'properties' envelope")
        if not isinstance(doc.get("location"), str) or not doc["location"]:
            raise ArmError(400, "LocationRequired", f"{rid}: 'location' is required")
        if "properties" in doc and not isinstance(doc["properties"], dict):
            raise ArmError(400, "InvalidRequestContent", f"{rid}: 'properties' must be an object")
        _check_camel({k: v for k, v in doc.items() if k != "tags"}, "body")
        tags = doc.get("tags") or {}
        if not all(isinstance(v, str) for v in tags.values()):
            raise ArmError(400, "InvalidTagValue", f"{rid}: tag values are strings")
        return doc

    def _put(self, rid: str, type_name: str, name: str, rtype: str, body: bytes, version: str):
        doc = self._body(body, rid)
        props = doc.get("properties") or {}
        self._validate(rtype, props, rid)
        for ref in _refs(props):
            base = ref.split("/subnets/")[0]
            if base not in self.resources:
                raise ArmError(400, "InvalidResourceReference", f"{rid} refers to {ref}, which does not exist")
            if "/subnets/" in ref:
                subnets = [s["name"].lower() for s in self.resources[base]["properties"].get("subnets", [])]
                if ref.split("/subnets/")[1] not in subnets:
                    raise ArmError(400, "InvalidResourceReference", f"subnet {ref} does not exist")
        existed = rid.lower() in self.resources
        stored = {"id": rid, "name": name, "type": type_name, "location": doc["location"],
                  "tags": doc.get("tags") or {}, "properties": dict(props)}
        if "sku" in doc:
            stored["sku"] = doc["sku"]
        self._assign(rtype, stored, rid)
        stored["properties"]["provisioningState"] = "Updating" if existed else "Creating"
        self.resources[rid.lower()] = stored
        op = self._new_op(rid.lower(), "put")
        if rtype in self.fail_type:
            code, message = self.fail_type[rtype]
            op.error = {"code": code, "message": message}
        ns = type_name.split("/")[0]
        return (200 if existed else 201), self._op_headers(op, ns, version), stored

    def _validate(self, rtype: str, props: dict, rid: str) -> None:
        if rtype == "microsoft.network/networksecuritygroups":
            for rule in props.get("securityRules", []):
                if "properties" not in rule or "name" not in rule:
                    raise ArmError(400, "InvalidRequestContent", f"{rid}: each security rule has a name and properties")
                for key in ("protocol", "access", "direction", "priority"):
                    _need(rule["properties"], key, "securityRule")
        elif rtype == "microsoft.network/virtualnetworks":
            _need(props, "addressSpace.addressPrefixes", "virtualNetwork")
            for sub in props.get("subnets", []):
                if "properties" not in sub or "name" not in sub:
                    raise ArmError(400, "InvalidRequestContent", f"{rid}: each subnet has a name and properties")
        elif rtype == "microsoft.network/networkinterfaces":
            configs = _need(props, "ipConfigurations", "networkInterface")
            for cfg in configs:
                _need(cfg.get("properties", {}), "subnet.id", "ipConfiguration")
        elif rtype == "microsoft.compute/virtualmachines":
            _need(props, "hardwareProfile.vmSize", "virtualMachine")
            _need(props, "storageProfile.imageReference", "virtualMachine")
            _need(props, "osProfile.adminUsername", "virtualMachine")
            _need(props, "networkProfile.networkInterfaces", "virtualMachine")
            custom = props["osProfile"].get("customData", "")
            if len(custom) > MAX_CUSTOM_DATA_CHARS:
                raise ArmError(400, "InvalidParameter", "customData is longer than 64 KiB")
            try:
                base64.b64decode(custom, validate=True)
            except ValueError:
                raise ArmError(400, "InvalidParameter", "customData must be base64") from None

    def _assign(self, rtype: str, stored: dict, rid: str) -> None:
        """Fields the cloud fills in itself."""
        props = stored["properties"]
        props.setdefault("resourceGuid", str(uuid.uuid4()))
        if rtype == "microsoft.network/publicipaddresses":
            props["ipAddress"] = self._ips.take()
        elif rtype == "microsoft.network/networkinterfaces":
            for i, cfg in enumerate(props["ipConfigurations"]):
                cfg["id"] = f"{rid}/ipConfigurations/{cfg.get('name', i)}"
                cfg["properties"]["privateIPAddress"] = f"10.0.0.{4 + i}"
        elif rtype == "microsoft.compute/virtualmachines":
            props["vmId"] = str(uuid.uuid4())

    def _view(self, resource: dict, query: dict) -> dict:
        out = json.loads(json.dumps(resource))
        if query.get("$expand") == "instanceView" and resource["type"].lower() == "microsoft.compute/virtualmachines":
            state = resource["properties"]["provisioningState"]
            out["properties"]["instanceView"] = {"statuses": [
                {"code": f"ProvisioningState/{state.lower()}"},
                {"code": "PowerState/running" if state == "Succeeded" else "PowerState/starting"}]}
        return out

    def _delete(self, rid: str, rtype: str, version: str):
        if rid not in self.resources:
            return 204, {}, None
        users = [other["id"] for key, other in self.resources.items() if key != rid
                 and any(r == rid or r.startswith(rid + "/") for r in _refs(other["properties"]))]
        if users:
            raise ArmError(400, IN_USE_CODES.get(rtype, "ResourceInUse"),
                           f"{self.resources[rid]['id']} is in use by {users[0]} and cannot be deleted.")
        self.resources[rid]["properties"]["provisioningState"] = "Deleting"
        op = self._new_op(rid, "delete")
        ns = self.resources[rid]["type"].split("/")[0]
        return 202, self._op_headers(op, ns, version, location=True), None

    # ------------------------------------------------------------------ long-running operations
    def _new_op(self, rid: str, kind: str) -> Operation:
        op = Operation(id=str(uuid.uuid4()), resource_id=rid, kind=kind)
        self.operations[op.id] = op
        return op

    def _op_headers(self, op: Operation, namespace: str, version: str, location: bool = False) -> dict:
        base = f"{self.url}/subscriptions/{self.subscription}/providers/{namespace}/locations/westeurope"
        headers = {"Azure-AsyncOperation": f"{base}/operations/{op.id}?api-version={version}",
                   "retry-after-ms": "10"}
        if location:
            headers["Location"] = f"{base}/operationResults/{op.id}?api-version={version}"
        if op.kind == "delete-group":
            del headers["Azure-AsyncOperation"]
        return headers

    def _advance(self, op: Operation) -> None:
        if op.status != "InProgress":
            return
        if op.polls_left > 0:
            op.polls_left -= 1
            return
        if op.kind == "put":
            res = self.resources.get(op.resource_id)
            op.status = "Failed" if op.error else "Succeeded"
            if res:
                res["properties"]["provisioningState"] = op.status
                if op.status == "Succeeded" and res["type"].lower() == "microsoft.compute/virtualmachines":
                    self._make_os_disk(res)
        elif op.kind == "delete":
            res = self.resources.pop(op.resource_id, None)
            if res and res["type"].lower() == "microsoft.compute/virtualmachines":
                disk = res["properties"]["storageProfile"].get("osDisk", {})
                if disk.get("deleteOption") == "Delete":
                    self.resources.pop(self._disk_id(res).lower(), None)
            op.status = "Succeeded"
        elif op.kind == "delete-group":
            prefix = op.resource_id + "/"
            for key in [k for k in self.resources if k.startswith(prefix)]:
                del self.resources[key]
            self.groups.pop(op.resource_id.rsplit("/", 1)[1], None)
            op.status = "Succeeded"

    def _disk_id(self, vm: dict) -> str:
        name = vm["properties"]["storageProfile"].get("osDisk", {}).get("name") or f"{vm['name']}_OsDisk"
        return vm["id"].rsplit("/providers/", 1)[0] + f"/providers/Microsoft.Compute/disks/{name}"

    def _make_os_disk(self, vm: dict) -> None:
        did = self._disk_id(vm)
        self.resources[did.lower()] = {"id": did, "name": did.rsplit("/", 1)[1], "type": "Microsoft.Compute/disks",
                                       "location": vm["location"], "tags": dict(vm["tags"]),
                                       "properties": {"provisioningState": "Succeeded",
                                                      "managedBy": vm["id"]}}

    def _operation(self, namespace: str, kind: str, op_id: str, version: str):
        op = self.operations.get(op_id.split("?")[0])
        if op is None:
            raise ArmError(404, "OperationNotFound", f"No operation {op_id}")
        self._advance(op)
        if kind == "operations":
            doc = {"id": op.id, "name": op.id, "status": op.status}
            if op.status == "Failed":
                doc["error"] = op.error
            return 200, ({"retry-after-ms": "10"} if op.status == "InProgress" else {}), doc
        if kind == "operationresults":
            if op.status == "InProgress":
                return 202, self._op_headers(op, namespace, version, location=True), None
            if op.status == "Failed":
                raise ArmError(400, op.error["code"], op.error["message"])
            return 204, {}, None
        raise ArmError(404, "InvalidResourceType", kind)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    arm: ArmServer

    def log_message(self, *args) -> None:    # quiet
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            if self.command == "PUT" and "json" not in (self.headers.get("Content-Type") or ""):
                raise ArmError(415, "UnsupportedMediaType", "PUT bodies are application/json")
            status, headers, doc = self.arm.handle(self.command, self.path, self.headers, body)
        except ArmError as exc:
            if exc.status != 404:       # "not found" is an answer, not a refusal
                self.arm.refusals.append(f"{self.command} {self.path}: {exc}")
            status, headers, doc = exc.status, {}, {"error": {"code": exc.code, "message": exc.message}}
        data = json.dumps(doc).encode() if doc is not None else b""
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if data:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_POST = _serve
