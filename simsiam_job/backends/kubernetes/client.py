"""The API server: which kubeconfig and namespace, one client with bounded calls, errors as one line.

The kubernetes client is imported inside functions only: rendering never loads it.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from simsiam_job.errors import BackendError, NotFoundError, UsageError

IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def kubeconfig_path(option: str) -> Path | None:
    """--set kubeconfig, else the first existing file of $KUBECONFIG, else ~/.kube/config."""
    if option:
        path = Path(option).expanduser()
        try:
            is_file = stat.S_ISREG(path.stat().st_mode)
        except OSError as err:      # missing, a symlink loop, a path through a file, ...
            raise UsageError(f"kubeconfig {path}: {err.strerror}") from None
        if not is_file:
            raise UsageError(f"kubeconfig {path} is not a regular file")
        return path
    for candidate in os.environ.get("KUBECONFIG", "").split(os.pathsep):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    default = Path.home() / ".kube" / "config"
    return default if default.is_file() else None


def namespace(options) -> str:
    """The namespace in use: --set namespace, else the kubeconfig context's, else the pod's own
    (in a cluster), else "default". Reads local files only (no kubernetes client: render uses it)."""
    if options.namespace:
        return options.namespace
    kubeconfig = kubeconfig_path(options.kubeconfig)
    if kubeconfig is None:
        return IN_CLUSTER_NAMESPACE.read_text().strip() if IN_CLUSTER_NAMESPACE.is_file() else "default"
    import yaml

    try:
        data = yaml.safe_load(kubeconfig.read_text()) or {}
        contexts = {c["name"]: c.get("context") or {} for c in data.get("contexts") or []}
    except (OSError, ValueError,  # ValueError: not UTF-8
            yaml.YAMLError, AttributeError, KeyError, TypeError) as err:
        raise UsageError(f"cannot read kubeconfig {kubeconfig}: {' '.join(str(err).split())}") from None
    if options.context and options.context not in contexts:
        raise UsageError(f"kubeconfig {kubeconfig} has no context {options.context!r} "
                         f"(it has: {', '.join(contexts)})")
    current = contexts.get(options.context or data.get("current-context") or "", {})
    return current.get("namespace") or "default"


class Api:
    """CoreV1Api, BatchV1Api and CustomObjectsApi (JobSets, Kueue's Workloads) on one ApiClient,
    every call bounded by the connect and read timeouts (a server behind a dead VPN accepts the
    connection and never answers)."""

    def __init__(self, options) -> None:
        try:
            from kubernetes import client, config
        except ModuleNotFoundError:
            raise UsageError("the Kubernetes client is not installed: pip install 'simsiam-job[kubernetes]' "
                             "(render works without it)") from None

        kubeconfig = kubeconfig_path(options.kubeconfig)
        cfg = client.Configuration()
        try:
            if kubeconfig is not None:
                config.load_kube_config(config_file=str(kubeconfig), context=options.context or None,
                                        client_configuration=cfg)
            elif os.environ.get("KUBERNETES_SERVICE_HOST"):
                config.load_incluster_config(client_configuration=cfg)
            else:
                raise UsageError("no kubeconfig found: set KUBECONFIG, create ~/.kube/config, or pass "
                                 "--set kubeconfig=PATH")
        except UsageError:
            raise
        except Exception as err:  # noqa: BLE001  (ConfigException, or what the client trips over in a bad file)
            raise UsageError(f"cannot use kubeconfig {kubeconfig}: {' '.join(str(err).split())}") from None
        # One attempt per call: urllib3's default three retries would multiply every timeout.
        cfg.retries = False
        self.host = cfg.host
        self.namespace = namespace(options)
        self.timeouts = (options.connect_timeout, options.read_timeout)
        api_client = _answer_reading_client(cfg)
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.apis = client.ApisApi(api_client)
        self._groups: set[str] | None = None

    def get_path(self, what: str, path: str, missing: str | None = None) -> Any:
        """GET an API path as JSON (for paths the generated clients cannot spell, such as a
        subresource of a subresource)."""
        api_client = self.custom.api_client
        return self.call(what, api_client.call_api, path, "GET", response_type="object",
                         auth_settings=["BearerToken"], _return_http_data_only=True, missing=missing)

    def serves(self, group: str) -> bool:
        """Whether the cluster serves an API group (discovery: one call, then remembered)."""
        if self._groups is None:
            found = self.call("asking the API server which APIs it serves", self.apis.get_api_versions)
            self._groups = {g.name for g in found.groups or []}
        return group in self._groups

    def call(self, what: str, fn, *args, missing: str | None = None, **kwargs):
        """One API call; its errors become one line with the server's own message and a hint.
        ``missing``: the NotFoundError message for a 404. On a followed log the read timeout bounds
        the wait for each chunk; the follower reconnects after it as after any closed stream."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        kwargs.setdefault("_request_timeout", self.timeouts)
        try:
            answer = fn(*args, **kwargs)
        except MalformedAnswer as err:
            raise self.not_kubernetes(what, str(err)) from None
        except ApiException as err:
            if err.status == 404 and missing is not None:
                raise NotFoundError(missing) from None
            raise api_error(err, what, self.namespace) from None
        except HTTPError as err:
            cause = _cause(err)
            wait = ("; --set read_timeout=SECONDS (or connect_timeout) waits longer"
                    if cause.startswith("no answer") else "")
            raise BackendError(f"{what}: cannot reach the API server at {self.host} ({cause}); check "
                               f"the kubeconfig context, the VPN and that the cluster is up{wait}") from None
        if not _object_or_list(answer):
            raise self.not_kubernetes(what, "an object without metadata or spec")
        return answer

    def not_kubernetes(self, what: str, detail: str) -> BackendError:
        return BackendError(f"{what}: the server at {self.host} did not answer with a Kubernetes object "
                            f"({detail[:160]}); is the kubeconfig's server a Kubernetes API server?")

    def gone(self, what: str, fn, *args, **kwargs) -> bool:
        """True when the object read by ``fn`` does not exist (404)."""
        try:
            self.call(what, fn, *args, missing="", **kwargs)
        except NotFoundError:
            return True
        return False


class MalformedAnswer(Exception):
    """A successful answer that cannot be read as the object asked for (not JSON, wrong shape)."""


def _answer_reading_client(cfg):
    """The kubernetes ApiClient, whose failures to read a successful answer raise MalformedAnswer
    (the client raises JSON, pydantic or decoding errors of its own, which say nothing to a user)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    class AnswerReadingClient(client.ApiClient):
        def response_deserialize(self, *args, **kwargs):
            try:
                return super().response_deserialize(*args, **kwargs)
            except ApiException:
                raise
            except Exception as err:  # noqa: BLE001  (whatever the body made the client trip over)
                raise MalformedAnswer(" ".join(str(err).split())) from None

    return AnswerReadingClient(cfg)


def _object_or_list(answer: Any) -> bool:
    """Whether an answer that parsed has the parts every object the API server returns carries
    (metadata, and a spec where the kind has one), for a list in each of its items."""
    items = getattr(answer, "items", None)
    for obj in items if isinstance(items, list) else [answer]:
        fields = getattr(type(obj), "model_fields", {})      # a model of the client (not a log's text)
        if type(obj).__name__ == "V1Status":                 # what a delete may answer: no object
            continue
        if any(name in fields and getattr(obj, name) is None for name in ("metadata", "spec")):
            return False
    return True


def _cause(err: Exception) -> str:
    """urllib3's reason in a few words: "Connection refused", "read timed out after 30 s", ..."""
    from urllib3.exceptions import ReadTimeoutError

    reason = getattr(err, "reason", None) or err
    # (not isinstance ConnectTimeoutError: urllib3's NewConnectionError, "refused", derives from it)
    if isinstance(reason, ReadTimeoutError) or "timed out" in str(reason):
        return "no answer within the timeout"
    text = str(reason)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)  # e.g. "Connection refused"
    return errno.group(1) if errno else text


_HINTS = {
    401: "the API server did not accept the credentials: refresh the kubeconfig's user",
    403: "ask an admin for the Role in k8s/rbac.yaml in namespace {namespace}",
    404: "check the namespace (--set namespace=...) and the name",
    409: "the name is taken: pick another --name, or `simsiam-job cancel` the old job",
}


def api_error(err: Any, what: str, namespace: str) -> Exception:
    """One line: what we tried, the API server's own message, and what to do about it."""
    message = err.reason or "error"
    try:
        body = json.loads(err.body or "{}")
    except (TypeError, ValueError):
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        message = body["message"] or message
    if err.status in (400, 422):
        # BadRequest / Invalid: the server rejected a value the user gave (a quantity, a name, ...).
        return UsageError(f"{what}: the API server rejected it: {message}")
    hint = _HINTS.get(err.status, "")
    if err.status == 403 and "exceeded quota" in message:
        hint = "the namespace's ResourceQuota is used up: ask for fewer nodes/GPUs or a larger quota"
    if err.status == 404 and "namespaces" in message:
        hint = "create the namespace or choose another with --set namespace=..."
    hint = hint.format(namespace=namespace)
    return BackendError(f"{what}: {message}" + (f" ({hint})" if hint else ""))
